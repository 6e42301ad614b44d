"""Performance retention, in miniature: how much of MHA's quality each attention kind keeps, for its KV cache.

Decoders of one shape (MHA, MQA, GQA, MHE-ADD, MHE-MUL, and a single-head control: MHE-MUL's shared
projection with its head embeddings frozen at 1, so every head is the same and what the embeddings add is
measured, not assumed) are trained on the same bytes of Python's documentation text for the same number of
steps, for each seed. Reported per kind: attention and total parameters, held-out bits per byte (mean over
seeds, and each seed), retention relative to MHA (bits per byte of a bigram model minus the kind's, over the
same for MHA: the share of MHA's gain over the bigram level that the kind keeps), KV-cache bytes per token,
and decode ms/token of its optimized ONNX export (--target ort, batch 4) relative to MHA's.

    python benchmarks/retention.py                      # ~1 hour on 2 cores (1 thread per run)
    python benchmarks/retention.py --steps 100 --seeds 0  # a quick look

Writes benchmarks/results/retention.json and retention.png (quality against KV-cache bytes per token).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from mhe_edge.accounting import kv_cache_bytes_per_token
from mhe_edge.config import preset_config
from mhe_edge.models import build_model
from mhe_edge.text.corpus import load_corpus
from mhe_edge.text.tokenizer import byte_tokenizer
from mhe_edge.training.loop import TrainOptions, run_training
from mhe_edge.training.workflow import evaluate_held_out

KINDS = ("mha", "mqa", "gqa", "mhe-add", "mhe-mul", "single-head")
SHAPE = dict(n_layers=4, d_model=128, n_heads=4, d_ff=512, max_seq_len=128)


def build(kind: str, seed: int):
    attention = "mhe-mul" if kind == "single-head" else kind
    extra = {"n_kv_heads": 2} if kind == "gqa" else {}
    config = preset_config(
        "tiny",
        attention=attention,
        vocab_size=257,
        bos_token_id=0,
        eos_token_id=0,
        **SHAPE,
        **extra,
    )
    model = build_model(config, seed=seed)
    if kind == "single-head":
        for block in model.blocks:
            for embedding in block.attn.head_embeddings():
                embedding.data.fill_(1.0)
                embedding.requires_grad_(False)
    return model


def attention_parameters(model) -> int:
    return sum(
        p.numel() for name, p in model.named_parameters() if ".attn." in name and p.requires_grad
    )


def decode_ms(model, work: Path) -> float:
    import mhe_edge

    raw, opt = work / "m.onnx", work / "m.opt.onnx"
    mhe_edge.export(model, raw, force=True)
    mhe_edge.optimize(raw, opt, target="ort", force=True)
    report = mhe_edge.profile(opt, batch=4, seq_len=64, new_tokens=32, runs=5, threads=1)
    return report.latency_ms["decode_per_token"]["p50"]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--steps", type=int, default=800)
    parser.add_argument("--seeds", default="0,1")
    parser.add_argument("--kinds", default=",".join(KINDS))
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args()
    torch.set_num_threads(1)
    seeds = [int(s) for s in args.seeds.split(",")]
    kinds = args.kinds.split(",")
    tokenizer, corpus = byte_tokenizer(), load_corpus()
    train_ids = np.fromiter(
        (i for doc in tokenizer.encode_batch(corpus.documents) for i in [*doc, 0]), dtype=np.int64
    )
    held_ids = np.asarray(tokenizer.encode(corpus.held_out), dtype=np.int64)
    options = dict(
        steps=args.steps, batch=32, seq_len=128, lr=2e-3, eval_every=10**9, checkpoint_every=10**9
    )
    rows: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as scratch:
        for seed in seeds:  # seeds outermost: a partial run still compares every kind
            for kind in kinds:
                model = build(kind, seed)
                run_folder = Path(scratch) / f"{kind}-{seed}"
                run_folder.mkdir()
                started = time.perf_counter()
                run_training(
                    model, train_ids, held_ids, TrainOptions(seed=seed, **options), run_folder
                )
                held = evaluate_held_out(model, tokenizer, corpus, train_ids, 128)
                row = rows.setdefault(
                    kind, {"kind": kind, "bits_per_byte_by_seed": {}, "decode_ms_by_seed": {}}
                )
                row["bits_per_byte_by_seed"][seed] = held["bits_per_byte"]
                row["decode_ms_by_seed"][seed] = decode_ms(model, Path(scratch))
                row.update(
                    attention_parameters=attention_parameters(model),
                    total_parameters=sum(p.numel() for p in model.parameters() if p.requires_grad),
                    kv_bytes_per_token=kv_cache_bytes_per_token(model.config),
                )
                baseline = {
                    "unigram": held["unigram_bits_per_byte"],
                    "bigram": held["bigram_bits_per_byte"],
                }
                print(
                    f"{kind:12s} seed {seed}: {held['bits_per_byte']:.4f} bits/byte"
                    f" (bigram {baseline['bigram']:.3f}) in {time.perf_counter() - started:.0f} s",
                    flush=True,
                )
    report(rows, baseline, args, seeds)


def report(rows: dict, baseline: dict, args, seeds: list[int]) -> None:
    for row in rows.values():
        row["bits_per_byte"] = float(np.mean(list(row["bits_per_byte_by_seed"].values())))
        row["decode_ms_per_token"] = float(np.median(list(row["decode_ms_by_seed"].values())))
    mha = rows.get("mha")
    for row in rows.values():
        if mha:
            row["retention"] = (baseline["bigram"] - row["bits_per_byte"]) / (
                baseline["bigram"] - mha["bits_per_byte"]
            )
            row["attention_parameters_vs_mha"] = (
                row["attention_parameters"] / mha["attention_parameters"]
            )
            row["kv_bytes_vs_mha"] = row["kv_bytes_per_token"] / mha["kv_bytes_per_token"]
            row["decode_vs_mha"] = row["decode_ms_per_token"] / mha["decode_ms_per_token"]
    header = (
        "| kind | attention params | total params | held-out bits/byte (seeds) | retention vs MHA"
        " | KV bytes/token | decode vs MHA |"
    )
    print(header)
    print("| --- | ---: | ---: | --- | ---: | ---: | ---: |")
    for row in rows.values():
        by_seed = ", ".join(f"{v:.3f}" for v in row["bits_per_byte_by_seed"].values())
        print(
            f"| {row['kind']} | {row['attention_parameters']:,} | {row['total_parameters']:,} |"
            f" {row['bits_per_byte']:.3f} ({by_seed}) |"
            f" {row.get('retention', float('nan')):.0%} | {row['kv_bytes_per_token']:,} |"
            f" {row.get('decode_vs_mha', float('nan')):.2f}x |"
        )
    print(
        f"bigram {baseline['bigram']:.3f} and unigram {baseline['unigram']:.3f} bits/byte on the same held-out text"
    )
    args.out.mkdir(parents=True, exist_ok=True)
    result = {
        "shape": SHAPE,
        "steps": args.steps,
        "batch": 32,
        "seq_len": 128,
        "seeds": seeds,
        "tokenizer": "bytes",
        "corpus": "python-docs",
        "baselines_bits_per_byte": baseline,
        "rows": list(rows.values()),
    }
    (args.out / "retention.json").write_text(json.dumps(result, indent=2) + "\n")
    plot(rows, baseline, args.out / "retention.png")


def plot(rows: dict, baseline: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(6.5, 4))
    for row in rows.values():
        values = list(row["bits_per_byte_by_seed"].values())
        axis.errorbar(
            row["kv_bytes_per_token"],
            row["bits_per_byte"],
            yerr=[[row["bits_per_byte"] - min(values)], [max(values) - row["bits_per_byte"]]],
            fmt="o",
            capsize=3,
        )
        axis.annotate(
            row["kind"],
            (row["kv_bytes_per_token"], row["bits_per_byte"]),
            textcoords="offset points",
            xytext=(6, 4),
        )
    axis.axhline(baseline["bigram"], ls="--", color="grey", lw=0.8, label="byte bigram")
    axis.set_xscale("log", base=2)
    axis.set_xlabel("KV-cache bytes per token (fp32)")
    axis.set_ylabel("held-out bits per byte (lower is better)")
    axis.set_title("Quality against KV-cache size (4 layers x 128, bytes of Python's docs)")
    axis.legend()
    axis.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


if __name__ == "__main__":
    main()
