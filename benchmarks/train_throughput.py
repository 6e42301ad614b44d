"""Training throughput in one and two processes, with and without gradient accumulation, DDP and FSDP
(`--fsdp`), in one interleaved run: tokens per second, peak memory per process, and the scaling efficiency
of two processes.

Every configuration trains the same model on the same token shards for the same steps, as `mhe-edge train`
(two processes: `torchrun --standalone --nproc-per-node 2`, DDP or FSDP2 over gloo on the CPU, NCCL with
`--provider cuda`). Throughput is the median of the steps' global tokens per second after the first
`--warmup` steps; peak memory is each process's own high-water mark (VmHWM), the largest over its ranks.
Scaling efficiency: two processes' throughput / (2 x one process's at the same per-process batch).

    python benchmarks/train_throughput.py [--rounds 2] [--steps 30] [--provider cpu]

Writes benchmarks/results/train_throughput.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

# (name, processes, batch per process, grad-accum, sharded): rows per step = batch x grad-accum x processes
CONFIGS = [
    ("1 process, batch 8", 1, 8, 1, False),
    ("1 process, batch 4 x grad-accum 2", 1, 4, 2, False),
    ("1 process, batch 4", 1, 4, 1, False),
    ("2 processes, batch 4", 2, 4, 1, False),
    ("2 processes, batch 2 x grad-accum 2", 2, 2, 2, False),
    ("2 processes, batch 4, --fsdp", 2, 4, 1, True),
    ("2 processes, batch 2 x grad-accum 2, --fsdp", 2, 2, 2, True),
]
MODEL = ["--layers", "4", "--d-model", "256", "--heads", "8", "--d-ff", "1024", "--max-seq-len", "128"]  # fmt: skip


def child(args: list[str]) -> None:
    """Run `mhe-edge ARGS` in this process, then record its peak memory beside the run (rank by rank)."""
    from mhe_edge.cli import main

    peak_file = Path(os.environ["PEAK_FILE"] + f".{os.environ.get('RANK', '0')}")
    try:
        main(args)
    finally:
        with open("/proc/self/status") as status:
            peak = next(line for line in status if line.startswith("VmHWM")).split()[1]
        peak_file.write_text(peak)


def run(name, processes, batch, accum, sharded, shards: Path, work: Path, args) -> dict:
    out = work / f"run-{len(list(work.iterdir()))}"
    peak_file = work / f"{out.name}.peak"
    train_args = [
        "train", str(shards), "-o", str(out), "--steps", str(args.steps), "--seq-len", "128",
        "--batch", str(batch), "--grad-accum", str(accum), "--provider", args.provider, *MODEL,
        "--json", *(["--fsdp"] if sharded else []),
    ]  # fmt: skip
    me = [str(Path(__file__).resolve()), "--child"]
    if processes == 1:
        command = [sys.executable, *me, *train_args]
    else:
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
                   "--nproc-per-node", str(processes), *me, *train_args]  # fmt: skip
    env = {**os.environ, "PEAK_FILE": str(peak_file)}
    if processes == 1:
        env["OMP_NUM_THREADS"] = str(args.threads_per_process)  # as torchrun gives each process
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=3600)
    if done.returncode != 0:
        raise SystemExit(f"{name} failed: {done.stderr[-2000:]}")
    log = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    speeds = [e["tokens_per_second"] for e in log if e["step"] > args.warmup]
    peaks = [int(p.read_text()) / 1024 for p in work.glob(f"{peak_file.name}.*")]
    return {
        "config": name,
        "processes": processes,
        "batch": batch,
        "grad_accum": accum,
        "fsdp": sharded,
        "tokens_per_second": statistics.median(speeds),
        "peak_mib": max(peaks),
        "final_loss": log[-1]["loss"],
    }


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        return child(sys.argv[2:])
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--provider", default="cpu")
    parser.add_argument("--threads-per-process", type=int, default=1)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args()
    rows: dict[str, list[dict]] = {name: [] for name, *_ in CONFIGS}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        import pydoc_data.topics

        text = work / "docs.txt"
        topics = pydoc_data.topics.topics
        text.write_text("".join(topics[k] for k in sorted(topics)))
        subprocess.run(
            [sys.executable, "-m", "mhe_edge", "tokenize", str(text), "-o", str(work / "shards")],
            check=True, capture_output=True,
        )  # fmt: skip
        runs = work / "runs"
        runs.mkdir()
        for round_index in range(args.rounds):  # interleaved: every config once per round
            for name, processes, batch, accum, sharded in CONFIGS:
                row = run(name, processes, batch, accum, sharded, work / "shards", runs, args)
                rows[name].append(row)
                print(
                    f"round {round_index + 1}: {name}: {row['tokens_per_second']:,.0f} tok/s",
                    flush=True,
                )
    table = []
    for found in rows.values():
        speeds = [r["tokens_per_second"] for r in found]
        table.append({**found[0], "tokens_per_second": statistics.median(speeds),
                      "spread": (max(speeds) - min(speeds)) / statistics.median(speeds),
                      "peak_mib": max(r["peak_mib"] for r in found)})  # fmt: skip
    by_name = {row["config"]: row for row in table}
    one = by_name["1 process, batch 4"]["tokens_per_second"]
    two = by_name["2 processes, batch 4"]["tokens_per_second"]
    efficiency = two / (2 * one)
    sharded = by_name["2 processes, batch 4, --fsdp"]["tokens_per_second"]
    print(f"\n{'configuration':<46} {'rows/step':>9} {'tokens/s':>10} {'peak MiB':>9} {'loss':>7}")
    for row in table:
        rows_per_step = row["processes"] * row["batch"] * row["grad_accum"]
        star = "*" if row["spread"] > 0.1 else " "
        print(f"{row['config']:<46} {rows_per_step:>9} {row['tokens_per_second']:>9,.0f}{star}"
              f" {row['peak_mib']:>9,.0f} {row['final_loss']:>7.3f}")  # fmt: skip
    print(
        f"scaling efficiency (2 processes at batch 4 / 2 x 1 process at batch 4): {efficiency:.2f}"
    )
    print(f"FSDP / DDP throughput (2 processes at batch 4): {sharded / two:.2f}")
    settings = {**vars(args), "out": None, "model": MODEL, "cores": os.cpu_count()}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "train_throughput.json").write_text(
        json.dumps(
            {
                "settings": settings,
                "rows": table,
                "scaling_efficiency": efficiency,
                "fsdp_over_ddp": sharded / two,
            },
            indent=2,
        )
        + "\n"
    )


if __name__ == "__main__":
    main()
