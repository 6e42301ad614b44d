"""`compare`: MHE against MHA, MQA and GQA, side by side on ONNX Runtime.

Each model is built at the same size, exported, optimized, then profiled in its own subprocess (so one
model's memory never pollutes another's peak). Ratios are to MHA at the same sequence length.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any, Callable, Sequence

from mhe_edge.accounting import count_parameters
from mhe_edge.errors import MheEdgeError, RequestError
from mhe_edge.exporters.metadata import read_metadata

DEFAULT_KINDS = ("mha", "mqa", "gqa", "mhe-add", "mhe-mul")


def profile_in_subprocess(path: Path, provider: str, batch: int, seq_len: int, new_tokens: int, runs: int,
                          prefill_chunk: int | None, threads: int | None) -> dict[str, Any]:
    command = [sys.executable, "-m", "mhe_edge", "profile", str(path), "--json", "--provider", provider,
               "--batch", str(batch), "--seq-len", str(seq_len), "--new-tokens", str(new_tokens), "--runs", str(runs)]
    if prefill_chunk:
        command += ["--prefill-chunk", str(prefill_chunk)]
    if threads:
        command += ["--threads", str(threads)]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        lines = [line for line in done.stderr.strip().splitlines() if line.strip()]
        raise MheEdgeError(f"profiling {path.name} at {seq_len} tokens failed: {lines[-1] if lines else done.returncode}")
    return json.loads(done.stdout)


def compare(
    files: Sequence[str | os.PathLike] = (),
    *,
    preset: str = "small",
    arch: str = "decoder",
    attentions: Sequence[str] = DEFAULT_KINDS,
    provider: str = "cpu",
    seq_lens: Sequence[int] = (128, 512),
    batch: int = 1,
    new_tokens: int = 8,
    runs: int = 2,
    prefill_chunk: int | None = None,
    target: str = "std",
    threads: int | None = None,
    plot: str | os.PathLike | None = None,
    on_progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Profile each model at each sequence length; returns {"rows": [...], "settings": {...}}."""
    if not seq_lens or any(t < 1 for t in seq_lens):
        raise RequestError(f"seq-lens must be positive integers, not {list(seq_lens)}")
    say = on_progress or (lambda message: None)
    with tempfile.TemporaryDirectory(prefix="mhe-edge-compare-") as tmp:
        models = [Path(f) for f in files] or _build_models(Path(tmp), preset, arch, attentions, target, say)
        rows = []
        for path in models:
            config, _, _ = read_metadata(path)
            for seq_len in seq_lens:
                say(f"profile {config.attention} at {seq_len} tokens")
                report = profile_in_subprocess(path, provider, batch, seq_len, new_tokens, runs, prefill_chunk, threads)
                latency = report["latency_ms"]
                rows.append({
                    "model": path.name,
                    "attention": config.attention,
                    "seq_len": seq_len,
                    "parameters": count_parameters(config)["total"],
                    "model_file_bytes": report["model_file_bytes"],
                    "kv_cache_bytes": report["kv_cache_bytes"],
                    "peak_memory_bytes": report["peak_memory_bytes"],
                    "prefill_ms": (latency.get("prefill") or latency.get("forward"))["p50"],
                    "decode_ms_per_token": latency["decode_per_token"]["p50"] if latency.get("decode_per_token") else None,
                })
    _add_ratios(rows)
    result = {"settings": {"provider": provider, "batch": batch, "seq_lens": list(seq_lens), "new_tokens": new_tokens,
                           "runs": runs, "prefill_chunk": prefill_chunk, "target": target,
                           "preset": None if files else preset, "arch": arch}, "rows": rows}
    if plot:
        plot_comparison(rows, Path(plot), f"{'files' if files else preset + ' ' + arch}, batch {batch}, {provider}")
        result["plot"] = str(plot)
    return result


def _build_models(folder: Path, preset, arch, attentions, target, say) -> list[Path]:
    import mhe_edge
    from mhe_edge.exporters import export
    from mhe_edge.passes import optimize

    paths = []
    for attention in attentions:
        config = mhe_edge.preset_config(preset, arch=arch, attention=attention)
        say(f"export {attention}")
        exported = folder / f"{attention}.onnx"
        export(mhe_edge.build_model(config, seed=0), exported)
        say(f"optimize {attention}")
        paths.append(Path(optimize(exported, folder / f"{attention}.opt.onnx", target=target).output))
        exported.unlink()
    return paths


def _add_ratios(rows: list[dict[str, Any]]) -> None:
    baseline = {r["seq_len"]: r for r in rows if r["attention"] == "mha"}
    for row in rows:
        base = baseline.get(row["seq_len"])
        for key in ("parameters", "model_file_bytes", "kv_cache_bytes", "peak_memory_bytes", "prefill_ms", "decode_ms_per_token"):
            value, reference = row[key], base[key] if base else None
            row[f"{key}_vs_mha"] = value / reference if value is not None and reference else None


def plot_comparison(rows: list[dict[str, Any]], path: Path, subtitle: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (memory_ax, decode_ax) = plt.subplots(1, 2, figsize=(11, 4.2))
    for attention in dict.fromkeys(r["attention"] for r in rows):
        mine = sorted((r for r in rows if r["attention"] == attention), key=lambda r: r["seq_len"])
        lengths = [r["seq_len"] for r in mine]
        style = dict(marker="o", linewidth=2.5 if attention.startswith("mhe") else 1.5, label=attention)
        memory_ax.plot(lengths, [(r["peak_memory_bytes"] or 0) / 2**20 for r in mine], **style)
        decode_ax.plot(lengths, [r["decode_ms_per_token"] or 0 for r in mine], **style)
    for ax, title, unit in ((memory_ax, "Peak memory", "MiB"), (decode_ax, "Decode time per token", "ms")):
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
    fig.savefig(path, dpi=120)
    plt.close(fig)
