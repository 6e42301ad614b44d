"""Conversion and uptraining, in miniature: how much of a pretrained MHA model's quality MHE keeps for a few
percent of the teacher's training tokens.

1. A teacher: a small Llama-shaped MHA decoder (RoPE, RMSNorm, SwiGLU, no biases, tied embeddings) trained
   with `mhe_edge.train` on Python's documentation text (bytes) until its loss flattens.
2. At budgets of 1%, 5% and 10% of the teacher's training tokens: MHE-MUL and MHE-ADD converted with each
   `--init` (svd, mean) and uptrained (`train --init-from`, the first tenth of the steps on the converted
   attention only), with and without distillation from the teacher (`--teacher`); mean-pooled MQA uptrained
   the same way (the GQA paper's baseline); and MHE-MUL trained from scratch with the same budget.
3. Held-out bits per byte for each (and before any uptraining), retention = (bigram - model) / (bigram -
   teacher), parameters and KV-cache bytes per token.

MHE-ADD's `svd` init equals its `mean` init for a model without biases (models/conversion.py): the two are
converted, their fits compared, and when identical the runs are done once and reported for both.

    nice -n 10 python benchmarks/conversion.py            # ~10 minutes on 2 busy cores (1 thread)
    python benchmarks/conversion.py --teacher-steps 200   # a quick look

Writes benchmarks/results/conversion.json and conversion.png (retention against budget; the README shows a
copy, docs/conversion.png).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

import mhe_edge
from mhe_edge.accounting import count_parameters, kv_cache_bytes_per_token
from mhe_edge.config import ModelConfig

SHAPE = dict(n_layers=2, d_model=64, n_heads=4, d_ff=172, max_seq_len=64)
BUDGETS = (0.01, 0.05, 0.10)
FLOOR = -0.3  # the plot's lowest retention
# ADD's mean before its svd: when the two fits are identical the svd rows reuse the mean runs.
CONVERTED = [
    ("mhe-mul", "svd"),
    ("mhe-mul", "mean"),
    ("mhe-add", "mean"),
    ("mhe-add", "svd"),
    ("mqa", "mean"),
]


def options(steps: int, args, lr: float, freeze: int = 0) -> mhe_edge.TrainOptions:
    return mhe_edge.TrainOptions(
        steps=steps,
        warmup=max(
            1, steps // 5
        ),  # a short run still warms up: a full-size first Adam step undoes a fit
        batch=args.batch,
        seq_len=SHAPE["max_seq_len"],
        lr=lr,
        seed=args.seed,
        eval_every=10**9,
        checkpoint_every=10**9,
        threads=args.threads,
        freeze_steps=freeze,
    )


def describe(config: dict) -> dict:
    config = ModelConfig.from_dict(config)
    return {
        "parameters": count_parameters(config)["total"],
        "kv_cache_bytes_per_token": kv_cache_bytes_per_token(config),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--teacher-steps", type=int, default=1000)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--uptrain-lr", type=float, default=3e-3)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    parser.add_argument("--replot", action="store_true", help="Redraw table and plot from --out.")
    args = parser.parse_args()
    if args.replot:
        result = json.loads((args.out / "conversion.json").read_text())
        plot(result, args.out / "conversion.png")
        print_table(result)
        return
    torch.set_num_threads(args.threads)
    tokens_per_step = args.batch * SHAPE["max_seq_len"]
    started = time.perf_counter()
    rows: list[dict] = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        teacher = mhe_edge.train(
            root / "teacher",
            attention="mha",
            preset="tiny-llama",
            tokenizer="bytes",
            options=options(args.teacher_steps, args, lr=2e-3),
            **SHAPE,
        )
        bigram = teacher.held_out["bigram_bits_per_byte"]
        teacher_bpb = teacher.held_out["bits_per_byte"]

        def retention(bpb: float) -> float:
            return (bigram - bpb) / (bigram - teacher_bpb)

        rows.append(
            {
                "model": "teacher (MHA)",
                "budget": 1.0,
                "bits_per_byte": teacher_bpb,
                "retention": 1.0,
                **describe(teacher.config),
            }
        )
        print(
            f"teacher: {teacher_bpb:.4f} bits/byte (bigram {bigram:.4f}), {teacher.tokens_trained:,} tokens"
        )
        conversions = {}
        for attention, init in CONVERTED:
            report = mhe_edge.convert(
                root / "teacher", root / f"{attention}-{init}", attention=attention, init=init
            )
            conversions[attention, init] = report
            rows.append(
                {
                    "model": f"{attention} {init}",
                    "budget": 0.0,
                    "distill": False,
                    "bits_per_byte": report.held_out["bits_per_byte"],
                    "retention": retention(report.held_out["bits_per_byte"]),
                    "fit_error": [layer.to_dict() for layer in report.layers],
                    **describe(report.config),
                }
            )
            print(
                f"converted {attention} {init}: {report.held_out['bits_per_byte']:.4f} bits/byte before training"
            )
        add_same = [layer.error for layer in conversions["mhe-add", "svd"].layers] == [
            layer.error for layer in conversions["mhe-add", "mean"].layers
        ]
        for budget in BUDGETS:
            steps = max(1, round(budget * args.teacher_steps))
            for attention, init in CONVERTED:
                for distill in (False, True):
                    name = f"{attention} {init}"
                    if attention == "mhe-add" and init == "svd" and add_same:
                        twin = next(
                            r
                            for r in rows
                            if r["model"] == "mhe-add mean"
                            and r["budget"] == budget
                            and r["distill"] == distill
                        )
                        rows.append({**twin, "model": name, "same_as": "mhe-add mean"})
                        continue
                    run = root / f"{attention}-{init}-{budget}-{distill}"
                    report = mhe_edge.train(
                        run,
                        init_from=root / f"{attention}-{init}",
                        teacher=root / "teacher" if distill else None,
                        options=options(steps, args, lr=args.uptrain_lr, freeze=steps // 10),
                    )
                    rows.append(
                        {
                            "model": name,
                            "budget": budget,
                            "distill": distill,
                            "steps": steps,
                            "tokens": report.tokens_trained,
                            "bits_per_byte": report.held_out["bits_per_byte"],
                            "retention": retention(report.held_out["bits_per_byte"]),
                            **describe(report.config),
                        }
                    )
                    print(
                        f"{budget:>5.0%} {name:14} distill={distill!s:5} {report.held_out['bits_per_byte']:.4f}"
                        f" bits/byte, retention {rows[-1]['retention']:.3f}"
                    )
            scratch = mhe_edge.train(
                root / f"scratch-{budget}",
                attention="mhe-mul",
                preset="tiny-llama",
                tokenizer="bytes",
                options=options(steps, args, lr=2e-3),
                **SHAPE,
            )
            rows.append(
                {
                    "model": "mhe-mul scratch",
                    "budget": budget,
                    "distill": False,
                    "steps": steps,
                    "tokens": scratch.tokens_trained,
                    "bits_per_byte": scratch.held_out["bits_per_byte"],
                    "retention": retention(scratch.held_out["bits_per_byte"]),
                    **describe(scratch.config),
                }
            )
            print(
                f"{budget:>5.0%} mhe-mul scratch {scratch.held_out['bits_per_byte']:.4f} bits/byte"
            )
    result = {
        "shape": SHAPE,
        "teacher_steps": args.teacher_steps,
        "teacher_tokens": args.teacher_steps * tokens_per_step,
        "bigram_bits_per_byte": bigram,
        "teacher_bits_per_byte": teacher_bpb,
        "add_svd_equals_mean": add_same,
        "seconds": time.perf_counter() - started,
        "rows": rows,
    }
    args.out.mkdir(exist_ok=True)
    (args.out / "conversion.json").write_text(json.dumps(result, indent=2) + "\n")
    plot(result, args.out / "conversion.png")
    print_table(result)


def print_table(result: dict) -> None:
    print(
        "| model | distill | "
        + " | ".join(f"{b:.0%}" for b in (0.0, *BUDGETS))
        + " | params | cache B/token |"
    )
    print("| --- | --- |" + " --- |" * (len(BUDGETS) + 3))
    names = dict.fromkeys(r["model"] for r in result["rows"] if r["model"] != "teacher (MHA)")
    for name in names:
        for distill in (False, True):
            cells = []
            found = [
                r for r in result["rows"] if r["model"] == name and r.get("distill") == distill
            ]
            if not found:
                continue
            for budget in (0.0, *BUDGETS):
                match = [r for r in found if r["budget"] == budget]
                cells.append(
                    f"{match[0]['bits_per_byte']:.3f} ({match[0]['retention']:.0%})"
                    if match
                    else "-"
                )
            first = found[0]
            print(
                f"| {name} | {'yes' if distill else 'no'} | "
                + " | ".join(cells)
                + f" | {first['parameters']:,} | {first['kv_cache_bytes_per_token']:,} |"
            )


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(7.5, 4.5))
    names = dict.fromkeys(r["model"] for r in result["rows"] if r["model"] != "teacher (MHA)")
    for name in names:
        for distill in (False, True):
            points = sorted(
                (r["budget"], r["retention"])
                for r in result["rows"]
                if r["model"] == name and r.get("distill") == distill and r["budget"] > 0
            )
            if points and not (name == "mhe-add svd" and result["add_svd_equals_mean"]):
                # a model far worse than bigram (scratch at 1%) is drawn on the floor, marked v
                shown = [(b, max(r, FLOOR)) for b, r in points]
                label = f"{name}{' + KD' if distill else ''}"
                if any(r < FLOOR for _, r in points):
                    label += " (v: below the axis)"
                (line,) = axis.plot(*zip(*shown), "o-" if distill else "s--", label=label)
                for b, r in points:
                    if r < FLOOR:
                        axis.plot([b], [FLOOR], "v", color=line.get_color(), ms=10)
    axis.set_ylim(FLOOR - 0.05, 1.05)
    axis.axhline(1.0, color="grey", lw=0.8)
    axis.axhline(0.95, color="grey", lw=0.8, ls=":")
    axis.set_xlabel("uptraining budget (fraction of the teacher's training tokens)")
    axis.set_ylabel("retention of the teacher's gain over bigram")
    axis.set_xticks(BUDGETS, [f"{b:.0%}" for b in BUDGETS])
    axis.legend(fontsize=7, ncol=2)
    axis.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


if __name__ == "__main__":
    main()
