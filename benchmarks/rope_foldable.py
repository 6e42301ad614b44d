"""What `--rope-pair-tied-embeddings` costs: held-out bits per byte of the same RoPE MHE-MUL decoder trained
with and without it (same preset, seed, text and steps), and whether `mhe-edge fold` writes each as Llama.

The option stores MHE-MUL's query and key head embeddings with one value per rotation pair, so each head's
folded query scale commutes with RoPE and the model folds exactly into Llama with one KV head; without it,
fold refuses a trained RoPE MHE-MUL. Both are scored by `mhe_edge.evaluate` on the held-out split of the
training text (Python's documentation by default), on identical windows. Several seeds show how large a
difference is against the seed-to-seed spread. Prints a table and writes JSON (default
benchmarks/results/rope_foldable.json). A few minutes on 2 cores at the defaults: run it under the shared
lock on a shared machine.

    .venv/bin/python benchmarks/rope_foldable.py [--preset tiny-llama] [--steps 300] [--seeds 0,1,2]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import mhe_edge
from mhe_edge.errors import first_line
from mhe_edge.workflows.fold import FoldRefused

VARIANTS = {"per-dimension (default)": False, "pair-tied (foldable)": True}


def train_and_fold(folder: Path, tied: bool, args, seed: int) -> dict:
    folder.mkdir()
    start = time.perf_counter()
    report = mhe_edge.train(
        folder / "model",
        preset=args.preset,
        options=dict(
            steps=args.steps,
            batch=args.batch,
            seq_len=args.seq_len,
            seed=seed,
            eval_every=args.steps,
            threads=args.threads,
        ),
        rope_pair_tied_embeddings=tied,
    )
    seconds = time.perf_counter() - start
    try:
        folded = mhe_edge.fold(folder / "model", folder / "llama")
        fold = {"folds": True, "float64_max_abs_diff": folded.float64_max_abs_diff}
    except FoldRefused as exc:
        fold = {"folds": False, "refused": first_line(exc)}
    return {
        "parameters": mhe_edge.count_parameters(mhe_edge.load_model(folder / "model").config)[
            "total"
        ],
        "train_seconds": seconds,
        "tokens_trained": report.tokens_trained,
        **fold,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="tiny-llama")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument(
        "--json", type=Path, default=Path(__file__).parent / "results" / "rope_foldable.json"
    )
    args = parser.parse_args()

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for seed in (int(s) for s in args.seeds.split(",")):
            folders = {}
            for name, tied in VARIANTS.items():
                folders[name] = Path(tmp) / f"seed{seed}-{'tied' if tied else 'plain'}"
                rows.append(
                    {
                        "seed": seed,
                        "variant": name,
                        **train_and_fold(folders[name], tied, args, seed),
                    }
                )
            # one held-out text (the runs share the seed, so the split), scored on identical windows
            scored = mhe_edge.evaluate([folder / "model" for folder in folders.values()])
            for row, scored_row in zip(rows[-len(VARIANTS) :], scored.rows, strict=True):
                row["bits_per_byte"] = scored_row.bits_per_byte
                row["bits_per_byte_change"] = scored_row.bits_per_byte_change
                print(
                    f"seed {seed} {row['variant']:24} {row['bits_per_byte']:.4f} bpb"
                    f" ({row['bits_per_byte_change']:+.4f}), folds: {row['folds']}",
                    flush=True,
                )

    changes = [r["bits_per_byte_change"] for r in rows if r["variant"] != next(iter(VARIANTS))]
    baselines = [r["bits_per_byte"] for r in rows if r["variant"] == next(iter(VARIANTS))]
    summary = {
        "mean_bits_per_byte_change": statistics.mean(changes),
        "changes_by_seed": changes,
        "baseline_seed_spread": max(baselines) - min(baselines),
    }

    from rich.console import Console
    from rich.table import Table

    table = Table(
        title=f"RoPE MHE-MUL, {args.preset}, {args.steps} steps of {args.batch} x {args.seq_len} tokens:"
        " held-out bits per byte"
    )
    for column in ("seed", "head embeddings", "parameters", "bits/byte", "change", "fold"):
        table.add_column(
            column, justify="left" if column in ("head embeddings", "fold") else "right"
        )
    for r in rows:
        fold = f"exact ({r['float64_max_abs_diff']:.1e})" if r["folds"] else "refused"
        table.add_row(
            str(r["seed"]),
            r["variant"],
            f"{r['parameters']:,}",
            f"{r['bits_per_byte']:.4f}",
            f"{r['bits_per_byte_change']:+.4f}",
            fold,
        )
    Console().print(table)
    print(
        f"pair-tied minus default: {summary['mean_bits_per_byte_change']:+.4f} bits per byte on average"
        f" (by seed: {', '.join(f'{c:+.4f}' for c in changes)}); the default's seed-to-seed spread:"
        f" {summary['baseline_seed_spread']:.4f}"
    )
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(
        json.dumps(
            {"args": {**vars(args), "json": str(args.json)}, "rows": rows, **summary}, indent=2
        )
        + "\n"
    )
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
