"""Where MHE pays: decode at long contexts and larger batches, where the KV cache is what a step reads.

Three decoders of one shape, random weights (speed does not depend on them), exported and optimized
`--target ort` (the fold makes MHE one KV head), differing only in attention:

  mhe-mul  MHE-MUL: one KV head after the fold      ("C" in benchmarks/scale.py)
  gqa      the shape's own GQA, 2 KV heads           ("A")
  mha      an MHA twin, KV heads = heads

Shapes: `A` is Qwen2-0.5B's (24 layers, width 896, 14 heads of 64, MLP 4864, vocabulary 151936, RoPE,
RMSNorm, SwiGLU, tied); `A-narrow` keeps its 14 heads and depth pattern at half the width and depth
(12 layers, width 448, heads of 32, MLP 2432, vocabulary 32000), so the whole grid runs on a laptop;
`tiny` tries the script in a minute.

For every context (default 1k, 4k, 16k) and batch (1, 4, 8), computed exactly: the KV cache's bytes,
its share of a decode step's bytes (every weight and the cache), the context from which the cache
outweighs the weights; and whether the run fits this machine's available memory (weights, cache, one
layer's synthetic past, logits). Cells that fit are measured: decode ms/token (`profile(past_len=T)`:
steps timed from a cache already holding T positions, no T-token prefill), every model in a fresh
process, rounds interleaved, min and median over rounds. Cells that do not fit are marked "does not fit
(needs X GiB)": that MHE fits where MHA does not is a result too.

    python benchmarks/long_context.py [--shape A-narrow] [--contexts 1024,4096,16384] [--batches 1,4,8]
        [--kinds mhe-mul,gqa,mha] [--rounds 2] [--new-tokens 4] [--work DIR] [--out benchmarks/results]
    python benchmarks/long_context.py --shape A --plan-only   # the computed grid alone, in a second

Prints a Markdown table, writes benchmarks/results/long_context_SHAPE.json and a plot of decode ms/token
against context, per attention, one panel per batch (long_context_SHAPE.png). Built models are kept in
--work and reused. Shape A needs ~9 minutes and ~5 GiB to export and optimize each model on 2 cores.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

_QWEN_LIKE = dict(
    position="rope",
    rope_theta=1_000_000.0,
    norm="rmsnorm",
    mlp="swiglu",
    qkv_bias=True,
    out_bias=False,
    mlp_bias=False,
    tie_embeddings=True,
    layer_norm_eps=1e-6,
)
SHAPES: dict[str, dict[str, Any]] = {
    "A": dict(
        n_layers=24, d_model=896, n_heads=14, head_dim=64, d_ff=4864, vocab_size=151936,
        max_seq_len=32768, **_QWEN_LIKE,
    ),
    "A-narrow": dict(
        n_layers=12, d_model=448, n_heads=14, head_dim=32, d_ff=2432, vocab_size=32000,
        max_seq_len=32768, **_QWEN_LIKE,
    ),
    "tiny": dict(
        n_layers=2, d_model=64, n_heads=4, head_dim=16, d_ff=128, vocab_size=1000,
        max_seq_len=20000, **_QWEN_LIKE,
    ),
}  # fmt: skip
KINDS = ("mhe-mul", "gqa", "mha")
GQA_KV_HEADS = 2  # Qwen2-0.5B's
WIDTH = 4  # fp32 bytes
MEASURED_WIN = (
    0.8  # the measured crossover: the first context where MHE decodes in under 0.8x MHA's time
)


def configs(shape: str, kinds=KINDS) -> dict[str, Any]:
    """attention kind -> the ModelConfig of `shape` with that attention."""
    from mhe_edge.config import ModelConfig

    fields = SHAPES[shape]
    return {
        kind: ModelConfig(
            attention=kind, n_kv_heads=GQA_KV_HEADS if kind == "gqa" else None, **fields
        )
        for kind in kinds
    }


def plan(
    configs: dict[str, Any],
    contexts: list[int],
    batches: list[int],
    new_tokens: int,
    available_bytes: int | None,
) -> list[dict[str, Any]]:
    """Every (attention, context, batch) cell with its computed bytes and whether its run fits
    `available_bytes` (None: unknown, taken as fitting); nothing is built or run."""
    from mhe_edge.accounting import count_parameters, kv_cache_bytes, kv_cache_bytes_per_token

    cells = []
    for kind, cfg in configs.items():
        weights = count_parameters(cfg)["total"] * WIDTH
        per_token = kv_cache_bytes_per_token(cfg, WIDTH)
        for batch in batches:
            for context in contexts:
                cache = kv_cache_bytes(cfg, batch, context + new_tokens, WIDTH)
                needs = (
                    weights
                    + cache
                    + kv_cache_bytes(cfg, batch, context, WIDTH) // cfg.n_layers  # one layer's past
                    + batch * cfg.vocab_size * WIDTH  # the logits
                )
                fits = context + new_tokens <= cfg.max_seq_len and (
                    available_bytes is None or needs <= available_bytes
                )
                cells.append(
                    {
                        "attention": kind,
                        "kv_heads": cfg.kv_heads,
                        "context": context,
                        "batch": batch,
                        "weight_bytes": weights,
                        "kv_cache_bytes": cache,
                        "kv_cache_bytes_per_token": per_token,
                        "cache_share_of_step": cache / (weights + cache),
                        "cache_exceeds_weights_at": math.floor(weights / (batch * per_token)) + 1,
                        "needs_bytes": needs,
                        "fits": fits,
                        "status": "measured"
                        if fits
                        else f"does not fit (needs {needs / 2**30:.1f} GiB)",
                    }
                )
    return cells


def build(shape: str, kind: str, work: Path) -> Path:
    """The `--target ort` file of `shape` with attention `kind`, built in a child process (export's memory
    is never this process's) and kept in `work` for the next run."""
    optimized = work / shape / f"{kind}.ort.onnx"
    if not optimized.exists():
        optimized.parent.mkdir(parents=True, exist_ok=True)
        started = time.perf_counter()
        subprocess.run(
            [sys.executable, __file__, "--build", json.dumps([shape, kind, str(optimized)])],
            check=True,
        )
        print(f"built {shape} {kind} in {time.perf_counter() - started:.0f} s", file=sys.stderr)
    return optimized


def build_child(shape: str, kind: str, optimized: Path) -> None:
    from mhe_edge.exporters import export
    from mhe_edge.models import build_model
    from mhe_edge.passes import optimize

    raw = optimized.with_name(f"{kind}.raw.onnx")
    big = SHAPES[shape]["vocab_size"] * SHAPES[shape]["d_model"] > 10**7
    export(build_model(configs(shape)[kind], seed=0), raw, external_data=big, force=True)
    optimize(raw, optimized, target="ort", force=True)
    for leftover in (raw, raw.with_name(raw.name + ".data")):
        leftover.unlink(missing_ok=True)


def measure(cells, paths, rounds: int, new_tokens: int) -> None:
    """Decode ms/token of every cell that fits, in fresh processes, rounds interleaved (every cell once per
    round); min and median over the rounds go into the cell."""
    from mhe_edge.workflows.fresh_process import profile_in_fresh_process

    todo = sorted(  # the kinds side by side at each point, so a noisy minute touches all alike
        (c for c in cells if c["fits"]),
        key=lambda c: (c["batch"], c["context"], KINDS.index(c["attention"])),
    )
    for index in range(rounds):
        for cell in todo:
            print(
                f"round {index + 1}/{rounds}: {cell['attention']} context {cell['context']}"
                f" batch {cell['batch']}",
                file=sys.stderr,
                flush=True,
            )
            report = profile_in_fresh_process(
                paths[cell["attention"]],
                past_len=cell["context"],
                batch=cell["batch"],
                new_tokens=new_tokens,
                runs=1,
                warmup=1,
                top_ops=0,
            )
            assert (
                report["kv_cache_bytes"] == cell["kv_cache_bytes"]
            )  # the plan's bytes are the run's
            cell.setdefault("decode_ms_samples", []).append(
                report["latency_ms"]["decode_per_token"]["p50"]
            )
            cell["peak_memory_bytes"] = max(
                cell.get("peak_memory_bytes") or 0, report["peak_memory_bytes"] or 0
            )
    for cell in todo:
        samples = cell["decode_ms_samples"]
        cell["decode_ms_min"], cell["decode_ms_median"] = min(samples), float(np.median(samples))


def add_ratios(cells) -> None:
    """Each cell's median decode over MHA's at the same context and batch (None where either is missing)."""
    mha = {(c["context"], c["batch"]): c for c in cells if c["attention"] == "mha"}
    for cell in cells:
        base = mha.get((cell["context"], cell["batch"]))
        ours, theirs = cell.get("decode_ms_median"), base and base.get("decode_ms_median")
        cell["decode_vs_mha"] = ours / theirs if ours and theirs else None


def crossovers(cells, batches) -> dict[str, Any]:
    """Per batch: the first measured context where MHE-MUL decodes in under MEASURED_WIN x MHA's time."""
    found = {}
    for batch in batches:
        wins = sorted(
            c["context"]
            for c in cells
            if c["attention"] == "mhe-mul"
            and c["batch"] == batch
            and c["decode_vs_mha"] is not None
            and c["decode_vs_mha"] < MEASURED_WIN
        )
        found[str(batch)] = wins[0] if wins else None
    return found


def print_table(shape: str, cells) -> None:
    print(f"\n### {shape}\n")
    print(
        "| attention | KV heads | batch | context | KV cache MiB | cache share of a step |"
        " cache > weights from | decode ms/token (min / median) | x MHA |"
    )
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for c in sorted(cells, key=lambda c: (c["batch"], c["context"], KINDS.index(c["attention"]))):
        decode = (
            f"{c['decode_ms_min']:,.1f} / {c['decode_ms_median']:,.1f}"
            if "decode_ms_median" in c
            else c["status"].replace("measured", "not run")
        )
        ratio = f"{c['decode_vs_mha']:.2f}x" if c.get("decode_vs_mha") else ""
        print(
            f"| {c['attention']} | {c['kv_heads']} | {c['batch']} | {c['context']:,} |"
            f" {c['kv_cache_bytes'] / 2**20:,.0f} | {c['cache_share_of_step']:.0%} |"
            f" {c['cache_exceeds_weights_at']:,} | {decode} | {ratio} |"
        )


def plot(shape: str, cells, batches, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(batches), figsize=(4.2 * len(batches), 3.8), squeeze=False)
    for ax, batch in zip(axes[0], batches):
        for kind in KINDS:
            mine = sorted(
                (c for c in cells if c["attention"] == kind and c["batch"] == batch),
                key=lambda c: c["context"],
            )
            measured = [c for c in mine if "decode_ms_median" in c]
            ax.plot(
                [c["context"] for c in measured],
                [c["decode_ms_median"] for c in measured],
                marker="o",
                linewidth=2.5 if kind.startswith("mhe") else 1.5,
                label=kind,
            )
            for c in mine:
                if not c["fits"]:
                    ax.annotate(
                        f"{kind}: does not fit", (c["context"], 0), rotation=90, fontsize=7,
                        xytext=(0, 4), textcoords="offset points",
                    )  # fmt: skip
        contexts = sorted({c["context"] for c in cells})
        ax.set(title=f"batch {batch}", xlabel="context (tokens)", ylabel="decode ms/token")
        ax.set_xscale("log", base=2)
        ax.set_xticks(contexts, [f"{t // 1024}k" if t >= 1024 else str(t) for t in contexts])
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(f"Decode time per token at long contexts, shape {shape} (ONNX Runtime, CPU)")
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--shape", default="A-narrow", choices=tuple(SHAPES))
    parser.add_argument("--contexts", default="1024,4096,16384")
    parser.add_argument("--batches", default="1,4,8")
    parser.add_argument("--kinds", default=",".join(KINDS), help="a subset of mhe-mul,gqa,mha")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--new-tokens", type=int, default=4)
    parser.add_argument(
        "--work", type=Path, default=Path(__file__).parent / "results" / "long-context-work"
    )
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    parser.add_argument(
        "--plan-only",
        action="store_true",
        help="print the computed grid (cache bytes, what fits here) without building or running",
    )
    parser.add_argument("--build", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.build:
        shape, kind, optimized = json.loads(args.build)
        return build_child(shape, kind, Path(optimized))
    from mhe_edge.runtime.memory import available_memory_bytes

    load = os.getloadavg()[0]
    contexts = [int(t) for t in args.contexts.split(",")]
    batches = [int(b) for b in args.batches.split(",")]
    started = time.perf_counter()
    kinds = [k for k in KINDS if k in args.kinds.split(",")]
    if args.plan_only:
        cells = plan(
            configs(args.shape, kinds), contexts, batches, args.new_tokens, available_memory_bytes()
        )
        print(f"available here: {available_memory_bytes() / 2**30:.1f} GiB")
        return print_table(args.shape, cells)
    paths = {kind: build(args.shape, kind, args.work) for kind in kinds}
    available = available_memory_bytes()  # after building: what the profiling processes can have
    cells = plan(configs(args.shape, kinds), contexts, batches, args.new_tokens, available)
    measure(cells, paths, args.rounds, args.new_tokens)
    add_ratios(cells)
    report = {
        "shape": args.shape,
        "config": SHAPES[args.shape],
        "settings": {
            "contexts": contexts,
            "batches": batches,
            "rounds": args.rounds,
            "new_tokens": args.new_tokens,
            "kinds": kinds,
            "available_bytes": available,
            "machine": f"{os.cpu_count()} cores, load average {load:.1f} at the start,"
            f" {os.getloadavg()[0]:.1f} at the end",
            "seconds": time.perf_counter() - started,
        },
        "measured_crossover_context": crossovers(cells, batches),
        "cells": cells,
    }
    print_table(args.shape, cells)
    print(
        f"\nmeasured crossover (MHE-MUL < {MEASURED_WIN}x MHA), by batch: {report['measured_crossover_context']}"
    )
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"long_context_{args.shape}.json").write_text(json.dumps(report, indent=2))
    plot(args.shape, cells, batches, args.out / f"long_context_{args.shape}.png")


if __name__ == "__main__":  # the profiling children are spawned: they import this file again
    main()
