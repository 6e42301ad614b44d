"""`compare`: MHE against MHA, MQA and GQA, side by side on ONNX Runtime.

Each model is built at the same size, exported, optimized, then profiled in its own subprocess (so one
model's memory never pollutes another's peak). Measurements are interleaved: every round profiles every
model once (a warm-up, then one measured run), so a noisy minute on a shared machine touches all models
alike; each row gives the median over rounds with its min and p90, and is flagged when (p90 - min) /
median exceeds 10%. Ratios are medians over MHA's at the same sequence length.

Beside the timings each row has what decides them at long contexts, computed from the config: the KV
cache's bytes per token, its share of the bytes a decode step reads (every weight and the cache), and
the context from which the cache outweighs the weights at this batch. `long_context` measures there:
decode steps at 4k and 16k tokens of (synthetic) past, batch 4, where MHE's cache, n_heads times smaller
than MHA's, is what a step is waiting for.
"""

from __future__ import annotations

import math
import os
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mhe_edge import options
from mhe_edge.accounting import count_parameters
from mhe_edge.errors import RequestError
from mhe_edge.files import check_output, read_header, staged_output
from mhe_edge.options import check_all
from mhe_edge.results import Result
from mhe_edge.sessions import check_provider
from mhe_edge.workflows.fresh_process import profile_in_fresh_process

DEFAULT_KINDS = options.ATTENTION.choices
PLOT_SUFFIXES = (".png", ".svg", ".pdf")


@dataclass
class CompareReport(Result):
    settings: dict[str, Any]
    rows: list[dict[str, Any]]  # one per model and length, with `*_vs_mha` ratios
    plot: str | None = None


def compare(
    files: Sequence[str | os.PathLike] = (),
    *,
    preset: str = "small",
    arch: str = "decoder",
    attentions: Sequence[str] = DEFAULT_KINDS,
    provider: str = "cpu",
    seq_lens: Sequence[int] | None = None,
    batch: int | None = None,
    new_tokens: int | None = None,
    runs: int | None = None,
    long_context: bool = False,
    prefill_chunk: int | None = None,
    target: str = "ort",
    threads: int | None = None,
    plot: str | os.PathLike | None = None,
    force: bool = False,
    on_progress: Callable[[str], None] | None = None,
) -> CompareReport:
    """Profile each model at each sequence length, each in a fresh process, in `runs` interleaved rounds;
    ratios are to MHA. Unset values come from the preset (`options.COMPARE_DEFAULT`: batch 4 at 512 and
    1024 tokens, those that fit the models' context, 32 decode steps, 3 rounds). `long_context`
    (`options.COMPARE_LONG_CONTEXT`) measures decode at 4096 and 16384 tokens, batch 4, 8 steps: each
    step timed from a synthetic past of that length (no prefill), the built models' context made long
    enough.

    With no `files`, same-size random-weight models of each kind in `attentions` are built from `preset`,
    exported and optimized for `target` first (ort, the default: with query_seqlens, so batches prefill in
    chunks here; its cache is updated in place).

    Example: `mhe_edge.compare(preset="tiny", seq_lens=[32, 64], plot="compare.png").rows`
    """
    if seq_lens is not None and not seq_lens:
        raise RequestError("give at least one sequence length")
    for seq_len in seq_lens or ():
        options.SEQ_LEN.check(seq_len)
    check_all(
        (options.COMPARE_BATCH, batch),
        (options.COMPARE_NEW_TOKENS, new_tokens),
        (options.COMPARE_RUNS, runs),
    )
    chosen = options.COMPARE_LONG_CONTEXT if long_context else options.COMPARE_DEFAULT
    batch = chosen.batch if batch is None else batch
    new_tokens = chosen.new_tokens if new_tokens is None else new_tokens
    runs = chosen.runs if runs is None else runs
    past = chosen.synthetic_past
    if past and new_tokens < 1:
        raise RequestError("--long-context times decode steps: give --new-tokens of at least 1")
    if past and arch != "decoder":
        raise RequestError("--long-context times decode steps: it is for decoders")
    if past and prefill_chunk is not None:
        raise RequestError("--long-context runs no prefill: give it without --prefill-chunk")
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
        steps = new_tokens if arch == "decoder" else 0
        for attention in attentions:
            config = preset_config(preset, arch=arch, attention=attention)
        if past:  # the preset's lengths, the models built to hold them
            seq_lens = seq_lens or list(chosen.seq_lens)
            max_seq_len = max(config.max_seq_len, max(seq_lens) + steps)
            options.MAX_SEQ_LEN_OPTION.check(max_seq_len)
            config = preset_config(preset, arch=arch, attention=attention, max_seq_len=max_seq_len)
        seq_lens = seq_lens or _fitting_lengths(config.max_seq_len, steps, chosen.seq_lens)
        needed = max(seq_lens) + steps
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
    length_key = "past_len" if past else "seq_len"
    with tempfile.TemporaryDirectory(prefix="mhe-edge-compare-") as tmp:
        models = (
            _prepare_files(Path(tmp), files, target, say)
            if files
            else _build_models(Path(tmp), preset, arch, attentions, target, say, config.max_seq_len)
        )
        configs = {path: read_header(path).config for _, path in models}
        if files and seq_lens is None:
            room = min(c.max_seq_len for c in configs.values())
            seq_lens = _fitting_lengths(room, new_tokens, chosen.seq_lens)
        assert seq_lens is not None  # given, or fitted to the models just above
        samples: dict[tuple[Path, int], list[dict[str, Any]]] = {}
        for round_index in range(runs):  # interleaved: every model once per round
            for _, path in models:
                for seq_len in seq_lens:
                    say(
                        f"round {round_index + 1}/{runs}: profile {configs[path].attention} at {seq_len} tokens"
                    )
                    samples.setdefault((path, seq_len), []).append(
                        profile_in_fresh_process(path, **{length_key: seq_len}, **profile_options)
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
        "long_context": long_context,
        "synthetic_past": past,
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


def _fitting_lengths(max_seq_len: int, new_tokens: int, wanted: Sequence[int]) -> list[int]:
    """The `wanted` lengths that fit before the context ends, else the longest prompt that does."""
    room = max_seq_len - new_tokens
    if room < 1:
        raise RequestError(
            f"{new_tokens} decode steps leave no room for a prompt in {max_seq_len} positions"
        )
    return [t for t in wanted if t <= room] or [room]


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
    prefills = [r["latency_ms"].get("prefill") or r["latency_ms"].get("forward") for r in reports]
    prefill = _spread([p["p50"] for p in prefills]) if all(prefills) else None
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
    batch, final_len = first["batch"], first["seq_len"] + first["new_tokens"]
    cache, weights = first["kv_cache_bytes"], first["parameter_bytes"]
    per_token = cache // (batch * final_len) if cache else 0  # per sequence: K and V, every layer
    return {
        "model": source,
        "attention": config.attention,
        "seq_len": seq_len,
        "parameters": count_parameters(config)["total"],
        "model_file_bytes": first["model_file_bytes"],
        "kv_cache_bytes": cache,
        "kv_cache_bytes_per_token": per_token,
        # of the bytes the last decode step reads (every weight and the cache), the cache's share
        "cache_share_of_step": cache / (weights + cache) if cache else 0.0,
        # the context from which the cache outweighs the weights at this batch
        "cache_exceeds_weights_at": math.floor(weights / (batch * per_token)) + 1
        if per_token
        else None,
        "peak_memory_bytes": max(peaks) if peaks else None,
        "cache": first.get("cache"),
        "rounds": len(reports),
        "prefill_ms": prefill["median"] if prefill else None,
        "prefill_ms_min": prefill["min"] if prefill else None,
        "prefill_ms_p90": prefill["p90"] if prefill else None,
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


def _build_models(
    folder: Path, preset, arch, attentions, target, say, max_seq_len: int
) -> list[tuple[str, Path]]:
    from mhe_edge.config import preset_config
    from mhe_edge.models import build_model

    return [
        (
            f"{attention}.opt.onnx",
            _export_and_optimize(
                build_model(
                    preset_config(preset, arch=arch, attention=attention, max_seq_len=max_seq_len),
                    seed=0,
                ),
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
            "kv_cache_bytes_per_token",
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
