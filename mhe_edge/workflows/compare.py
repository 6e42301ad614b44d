"""`compare`: MHE against MHA, MQA and GQA, side by side on ONNX Runtime.

Each model is built at the same size, exported, optimized, then profiled in its own subprocess (so one
model's memory never pollutes another's peak). Measurements are interleaved: every round profiles every
model once (a warm-up, then one measured run), so a noisy minute on a shared machine touches all models
alike; each row gives the median over rounds with its min and p90, and is flagged when (p90 - min) /
median exceeds 10%. Ratios are medians over MHA's at the same sequence length.
"""

from __future__ import annotations

import multiprocessing
import os
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mhe_edge import errors, options
from mhe_edge.accounting import count_parameters
from mhe_edge.errors import MheEdgeError, RequestError, first_line
from mhe_edge.files import check_output, read_header, staged_output
from mhe_edge.options import check_all
from mhe_edge.results import Result
from mhe_edge.sessions import check_provider

DEFAULT_KINDS = options.ATTENTION.choices
PLOT_SUFFIXES = (".png", ".svg", ".pdf")


@dataclass
class CompareReport(Result):
    settings: dict[str, Any]
    rows: list[dict[str, Any]]  # one per model and length, with `*_vs_mha` ratios
    plot: str | None = None


def _profile_child(queue, path: str, options: dict[str, Any]) -> None:
    """Runs in a fresh (spawned) interpreter: its peak memory is this model's alone."""
    from mhe_edge.runtime.profiler import profile

    try:
        queue.put(("ok", profile(path, **options).to_dict()))
    except MheEdgeError as exc:
        queue.put((type(exc).__name__, str(exc)))
    except Exception as exc:  # a crash in one model's run becomes one line in the parent
        queue.put(("MheEdgeError", f"{type(exc).__name__}: {first_line(exc)}"))


def profile_in_fresh_process(path: Path, **options: Any) -> dict[str, Any]:
    """`runtime.profile(path, **options)` in a spawned process; its report as a dict."""
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    child = context.Process(target=_profile_child, args=(queue, str(path), options), daemon=True)
    child.start()
    try:
        status, payload = _result_of(child, queue)
    except KeyboardInterrupt:
        child.terminate()
        raise
    finally:
        child.join()
    if status != "ok":  # the child's error class, so the exit code is the one it would have had
        error_class = getattr(errors, status, MheEdgeError)
        raise error_class(
            f"profiling {path.name} at {options.get('seq_len')} tokens failed: {payload}"
        )
    return payload


def _result_of(child, queue) -> tuple[str, Any]:
    """The child's one message; a child that dies without sending one (killed, or a script re-run by spawn
    that fails at import: guard it with `if __name__ == "__main__":`) is an error, never a hang."""
    import queue as queues

    while True:
        try:
            return queue.get(timeout=0.5)
        except queues.Empty:
            if not child.is_alive():
                try:
                    return queue.get(timeout=0.5)
                except queues.Empty:
                    return "MheEdgeError", (
                        f"the profiling process ended with exit code {child.exitcode} before reporting"
                        ' (run from a script? put the call under `if __name__ == "__main__":`)'
                    )


def compare(
    files: Sequence[str | os.PathLike] = (),
    *,
    preset: str = "small",
    arch: str = "decoder",
    attentions: Sequence[str] = DEFAULT_KINDS,
    provider: str = "cpu",
    seq_lens: Sequence[int] | None = None,
    batch: int = 1,
    new_tokens: int = 32,
    runs: int = 5,
    prefill_chunk: int | None = None,
    target: str = "ort",
    threads: int | None = None,
    plot: str | os.PathLike | None = None,
    force: bool = False,
    on_progress: Callable[[str], None] | None = None,
) -> CompareReport:
    """Profile each model at each sequence length, each in a fresh process, in `runs` interleaved rounds;
    ratios are to MHA. `seq_lens` defaults to 128 and 512, those that fit the models' context.

    With no `files`, same-size random-weight models of each kind in `attentions` are built from `preset`,
    exported and optimized for `target` first (ort, the default: with query_seqlens, so batches prefill in
    chunks here; its cache is updated in place).

    Example: `mhe_edge.compare(preset="tiny", seq_lens=[32, 64], plot="compare.png").rows`
    """
    if seq_lens is not None and not seq_lens:
        raise RequestError("give at least one sequence length")
    for seq_len in seq_lens or ():
        options.SEQ_LEN.check(seq_len)
    if not files and not attentions:
        raise RequestError("give at least one attention kind to build (or files to compare)")
    for kind in attentions if not files else ():
        options.ATTENTION.check(kind)
    check_all(
        (options.PRESET, preset),
        (options.ARCH, arch),
        (options.PROVIDER, provider),
        (options.BATCH, batch),
        (options.NEW_TOKENS, new_tokens),
        (options.RUNS, runs),
        (options.PREFILL_CHUNK, prefill_chunk),
        (options.TARGET, target),
        (options.THREADS, threads),
    )
    plot_path = (
        check_output(plot, force=force, suffixes=PLOT_SUFFIXES) if plot is not None else None
    )
    check_provider(provider)  # every refusal before the first model is built
    if not files:
        from mhe_edge.config import preset_config
        from mhe_edge.passes import build_passes

        build_passes(target)
        for attention in attentions:
            config = preset_config(preset, arch=arch, attention=attention)
        seq_lens = seq_lens or _fitting_lengths(
            config.max_seq_len, new_tokens if arch == "decoder" else 0
        )
        needed = max(seq_lens) + (new_tokens if arch == "decoder" else 0)
        if needed > config.max_seq_len:
            raise RequestError(
                f"{max(seq_lens)} tokens + {new_tokens} decode steps exceed the {preset} preset's "
                f"{config.max_seq_len} positions; choose shorter --seq-lens"
            )
    say = on_progress or (lambda message: None)
    profile_options = dict(
        provider=provider,
        batch=batch,
        new_tokens=new_tokens,
        runs=1,
        warmup=1,
        prefill_chunk=prefill_chunk,
        threads=threads,
        top_ops=0,
    )
    with tempfile.TemporaryDirectory(prefix="mhe-edge-compare-") as tmp:
        models = (
            _prepare_files(Path(tmp), files, target, say)
            if files
            else _build_models(Path(tmp), preset, arch, attentions, target, say)
        )
        configs = {path: read_header(path).config for _, path in models}
        if files and seq_lens is None:
            seq_lens = _fitting_lengths(min(c.max_seq_len for c in configs.values()), new_tokens)
        assert seq_lens is not None  # given, or fitted to the models just above
        samples: dict[tuple[Path, int], list[dict[str, Any]]] = {}
        for round_index in range(runs):  # interleaved: every model once per round
            for _, path in models:
                for seq_len in seq_lens:
                    say(
                        f"round {round_index + 1}/{runs}: profile {configs[path].attention} at {seq_len} tokens"
                    )
                    samples.setdefault((path, seq_len), []).append(
                        profile_in_fresh_process(path, seq_len=seq_len, **profile_options)
                    )
        rows = [
            _row(source, configs[path], seq_len, samples[(path, seq_len)])
            for source, path in models
            for seq_len in seq_lens
        ]
    _add_ratios(rows)
    settings = {
        "provider": provider,
        "batch": batch,
        "seq_lens": list(seq_lens),
        "new_tokens": new_tokens,
        "runs": runs,
        "prefill_chunk": prefill_chunk,
        "target": target,
        "preset": None if files else preset,
        "arch": arch,
    }
    result = CompareReport(settings, rows)
    if plot_path is not None:
        with staged_output(plot_path, force=force) as staged:
            plot_comparison(
                rows,
                staged,
                f"{'files' if files else preset + ' ' + arch}, batch {batch}, {provider}",
                plot_path.suffix[1:],
            )
        result.plot = str(plot_path)
    return result


def _fitting_lengths(max_seq_len: int, new_tokens: int) -> list[int]:
    """128 and 512 where they fit before the context ends, else the longest prompt that does."""
    room = max_seq_len - new_tokens
    if room < 1:
        raise RequestError(
            f"{new_tokens} decode steps leave no room for a prompt in {max_seq_len} positions"
        )
    return [t for t in (128, 512) if t <= room] or [room]


def _spread(values: list[float]) -> dict[str, float]:
    import numpy as np

    median = float(np.median(values))
    p90 = float(np.percentile(values, 90))
    return {
        "min": float(min(values)),
        "median": median,
        "p90": p90,
        "spread": (p90 - float(min(values))) / median if median > 0 else 0.0,
    }


def _row(source: str, config, seq_len: int, reports: list[dict[str, Any]]) -> dict[str, Any]:
    """One model at one length, over its rounds: medians, with min, p90 and spread."""
    from mhe_edge.runtime.profiler import UNSTABLE_SPREAD

    first = reports[0]
    prefill = _spread(
        [(r["latency_ms"].get("prefill") or r["latency_ms"].get("forward"))["p50"] for r in reports]
    )
    decoding = [
        r["latency_ms"]["decode_per_token"]["p50"]
        for r in reports
        if r["latency_ms"].get("decode_per_token")
    ]
    decode = _spread(decoding) if decoding else None
    peaks = [r["peak_memory_bytes"] for r in reports if r["peak_memory_bytes"] is not None]
    unstable = [
        name
        for name, stats in (("prefill", prefill), ("decode", decode))
        if stats and stats["spread"] > UNSTABLE_SPREAD
    ]
    return {
        "model": source,
        "attention": config.attention,
        "seq_len": seq_len,
        "parameters": count_parameters(config)["total"],
        "model_file_bytes": first["model_file_bytes"],
        "kv_cache_bytes": first["kv_cache_bytes"],
        "peak_memory_bytes": max(peaks) if peaks else None,
        "cache": first.get("cache"),
        "rounds": len(reports),
        "prefill_ms": prefill["median"],
        "prefill_ms_min": prefill["min"],
        "prefill_ms_p90": prefill["p90"],
        "decode_ms_per_token": decode["median"] if decode else None,
        "decode_ms_min": decode["min"] if decode else None,
        "decode_ms_p90": decode["p90"] if decode else None,
        "unstable": unstable,
    }


def _export_and_optimize(model, folder: Path, stem: str, label: str, target: str, say) -> Path:
    """A model object or checkpoint -> an optimized ONNX file in `folder` (ort: with query_seqlens, so batches
    prefill in chunks on this machine's ONNX Runtime); the intermediate export is removed."""
    from mhe_edge.exporters import export
    from mhe_edge.passes import optimize

    say(f"export {label}")
    exported = folder / f"{stem}.onnx"
    export(model, exported)
    say(f"optimize {label}")
    optimized = optimize(
        exported, folder / f"{stem}.opt.onnx", target=target, ort_query_seqlens=target == "ort"
    )
    exported.unlink()
    return Path(optimized.output)


def _build_models(folder: Path, preset, arch, attentions, target, say) -> list[tuple[str, Path]]:
    from mhe_edge.config import preset_config
    from mhe_edge.models import build_model

    return [
        (
            f"{attention}.opt.onnx",
            _export_and_optimize(
                build_model(preset_config(preset, arch=arch, attention=attention), seed=0),
                folder,
                attention,
                attention,
                target,
                say,
            ),
        )
        for attention in attentions
    ]


def _prepare_files(folder: Path, files, target, say) -> list[tuple[str, Path]]:
    """ONNX files as they are; checkpoints and model folders (ours or imported) exported and optimized first."""
    return [
        (
            file.name,
            file
            if file.suffix == ".onnx"
            else _export_and_optimize(file, folder, str(index), file.name, target, say),
        )
        for index, file in enumerate(Path(f) for f in files)
    ]


def _add_ratios(rows: list[dict[str, Any]]) -> None:
    baseline = {r["seq_len"]: r for r in rows if r["attention"] == "mha"}
    for row in rows:
        base = baseline.get(row["seq_len"])
        for key in (
            "parameters",
            "model_file_bytes",
            "kv_cache_bytes",
            "peak_memory_bytes",
            "prefill_ms",
            "decode_ms_per_token",
        ):
            value, reference = row[key], base[key] if base else None
            row[f"{key}_vs_mha"] = value / reference if value is not None and reference else None


def plot_comparison(
    rows: list[dict[str, Any]], path: Path, subtitle: str, image_format: str = "png"
) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (memory_ax, decode_ax) = plt.subplots(1, 2, figsize=(11, 4.2))
    for attention in dict.fromkeys(r["attention"] for r in rows):
        mine = sorted((r for r in rows if r["attention"] == attention), key=lambda r: r["seq_len"])
        lengths = [r["seq_len"] for r in mine]
        style = dict(
            marker="o", linewidth=2.5 if attention.startswith("mhe") else 1.5, label=attention
        )
        memory_ax.plot(lengths, [(r["peak_memory_bytes"] or 0) / 2**20 for r in mine], **style)
        decode_ax.plot(lengths, [r["decode_ms_per_token"] or 0 for r in mine], **style)
    for ax, title, unit in (
        (memory_ax, "Peak memory", "MiB"),
        (decode_ax, "Decode time per token", "ms"),
    ):
        ax.set_title(title)
        ax.set_xlabel("sequence length (tokens)")
        ax.set_ylabel(unit)
        ax.set_xscale("log", base=2)
        lengths = sorted({r["seq_len"] for r in rows})
        ax.set_xticks(lengths, [str(t) for t in lengths])
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(f"mhe-edge compare ({subtitle})")
    fig.tight_layout()
    fig.savefig(path, dpi=120, format=image_format)
    plt.close(fig)
