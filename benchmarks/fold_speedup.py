"""What folding buys: prefill and per-token decode time of MHE decoders before and after `optimize`.

Runs on ONNX Runtime (CPU) in one process, so the before/after ratios share the machine's state.
Prints a table and writes JSON (default benchmarks/results/fold_speedup.json).

    .venv/bin/python benchmarks/fold_speedup.py [--preset small] [--context 512] [--steps 32] [--runs 5]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

import mhe_edge
from mhe_edge.contract import input_names
from mhe_edge.exporters import export
from mhe_edge.passes import optimize
from mhe_edge.runtime import create_session


def time_model(
    path: Path, config, batch: int, context: int, steps: int, runs: int, threads: int | None
) -> dict:
    """Median prefill time for `context` tokens, and median per-token decode time over `steps` steps after it."""
    session = create_session(path, "cpu", threads=threads)
    dtype = np.float16 if session.get_inputs()[1].type == "tensor(float16)" else np.float32
    empty = {
        n: np.zeros((batch, config.kv_heads, 0, config.head_dim), dtype)
        for n in input_names(config)[1:]
    }
    outputs = [o.name for o in session.get_outputs()]
    rng = np.random.default_rng(0)
    prompt = rng.integers(0, config.vocab_size, (batch, context))
    prefill, decode = [], []
    for run in range(runs + 1):  # the first run warms up
        start = time.perf_counter()
        result = dict(zip(outputs, session.run(None, {"input_ids": prompt, **empty})))
        prefill_s = time.perf_counter() - start
        past = {n: result[n.replace("past_key_values", "present")] for n in empty}
        token = result["logits"][:, -1:].argmax(-1)
        start = time.perf_counter()
        for _ in range(steps):
            result = dict(zip(outputs, session.run(None, {"input_ids": token, **past})))
            past = {n: result[n.replace("past_key_values", "present")] for n in empty}
            token = result["logits"].argmax(-1)
        decode_s = (time.perf_counter() - start) / steps
        if run:
            prefill.append(prefill_s)
            decode.append(decode_s)
    return {
        "prefill_ms": 1000 * statistics.median(prefill),
        "decode_ms_per_token": 1000 * statistics.median(decode),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="small")
    parser.add_argument("--attention", default="mhe-mul,mhe-add")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--context", type=int, default=512)
    parser.add_argument("--steps", type=int, default=32)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument(
        "--json", type=Path, default=Path(__file__).parent / "results" / "fold_speedup.json"
    )
    args = parser.parse_args()

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for attention in args.attention.split(","):
            config = mhe_edge.preset_config(args.preset, attention=attention)
            model = mhe_edge.build_model(config, seed=0)
            exported = Path(tmp) / f"{attention}.onnx"
            export(model, exported)
            variants = {"exported (per-head function)": exported}
            for target in ("std", "ort"):
                variants[f"optimized --target {target}"] = optimize(
                    exported, Path(tmp) / f"{attention}.{target}.onnx", target=target
                ).output
            baseline = None
            for name, path in variants.items():
                timing = time_model(
                    Path(path),
                    config,
                    args.batch,
                    args.context,
                    args.steps,
                    args.runs,
                    args.threads,
                )
                baseline = baseline or timing
                rows.append(
                    {
                        "attention": attention,
                        "variant": name,
                        **timing,
                        "prefill_ratio": timing["prefill_ms"] / baseline["prefill_ms"],
                        "decode_ratio": timing["decode_ms_per_token"]
                        / baseline["decode_ms_per_token"],
                        "file_bytes": Path(path).stat().st_size,
                    }
                )
                print(
                    f"{attention:8} {name:30} prefill {timing['prefill_ms']:8.1f} ms  decode"
                    f" {timing['decode_ms_per_token']:7.2f} ms/token",
                    flush=True,
                )

    from rich.console import Console
    from rich.table import Table

    table = Table(
        title=f"folding on ONNX Runtime CPU: {args.preset} decoder, batch {args.batch}, "
        f"prefill {args.context} tokens, then {args.steps} decode steps (median of {args.runs})"
    )
    for column in ("attention", "graph", "prefill ms", "x", "decode ms/token", "x"):
        table.add_column(column)
    for row in rows:
        table.add_row(
            row["attention"],
            row["variant"],
            f"{row['prefill_ms']:.1f}",
            f"{row['prefill_ratio']:.2f}",
            f"{row['decode_ms_per_token']:.2f}",
            f"{row['decode_ratio']:.2f}",
        )
    Console().print(table)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(
        json.dumps({"settings": vars(args) | {"json": str(args.json)}, "rows": rows}, indent=2)
    )
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
