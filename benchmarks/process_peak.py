"""What an mhe-edge process costs in memory beside a plain ONNX Runtime session of the same file.

A "plain session" is the Python a user would write with nothing but numpy and onnxruntime: load the file,
prefill the prompt, decode greedily, copying each present back as the next past. Beside it, in fresh
processes and rounds interleaved: `mhe-edge generate --prompt ... --max-new-tokens N` and
`mhe-edge profile --seq-len ... --new-tokens N` on the same file. Each process's peak resident memory
is read from the kernel when it ends (wait4's ru_maxrss), so imports, the header read, the session and
every step count.

    python benchmarks/process_peak.py                 # the small preset's MHE-MUL export, ~1 minute
    python benchmarks/process_peak.py --model m.onnx --rounds 5

Prints a Markdown table (min / median / max MiB, the medians' ratio to the plain session's and each
process's worst against the plain session's best) and writes
benchmarks/results/process_peak.json. ONNX Runtime's load is bimodal on some files (weight prepacking
lands on one heap layout or another from run to run): the spread is part of the result.
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

PLAIN_SESSION = """
import sys
from types import SimpleNamespace

import numpy as np
import onnxruntime as ort

sys.path.insert(0, sys.argv[4])
from inplace_cache import plain_loop_decode  # imports numpy alone: no mhe-edge in this process

session = ort.InferenceSession(sys.argv[1], providers=["CPUExecutionProvider"])
past = next(i for i in session.get_inputs() if i.name.startswith("past_key_values."))
layout = SimpleNamespace(kv_heads=past.shape[1], head_dim=past.shape[3])
prompt = np.ones((1, int(sys.argv[2])), np.int64)
plain_loop_decode(session, layout, prompt, prompt.shape[1], int(sys.argv[3]))
"""


def peak_mib(command: list[str]) -> float:
    """The finished process's peak resident memory (its own, not its children's)."""
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)
    error = process.stderr.read().decode(errors="replace") if process.stderr else ""
    if process.returncode != 0:
        raise SystemExit(f"{' '.join(command[:3])} failed ({process.returncode}): {error[-500:]}")
    return usage.ru_maxrss / 1024  # KiB on Linux


def build_model(work: Path) -> Path:
    checkpoint, model = work / "small.pt", work / "small.onnx"
    if not model.exists():
        mhe_edge = [sys.executable, "-m", "mhe_edge"]
        for args in (
            ["init", str(checkpoint), "--preset", "small", "--attention", "mhe-mul"],
            ["export", str(checkpoint)],
        ):
            subprocess.run(mhe_edge + args, check=True, capture_output=True)
    return model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--model", type=Path, help="a decoder export (default: build the small preset's)"
    )
    parser.add_argument(
        "--work", type=Path, help="where the built model is kept (default: a temporary folder)"
    )
    parser.add_argument(
        "--rounds", type=int, default=3, help="interleaved rounds: each process once per round"
    )
    parser.add_argument("--prompt", type=int, default=8, help="prompt tokens")
    parser.add_argument("--new-tokens", type=int, default=16)
    parser.add_argument(
        "--out",
        type=Path,
        default=Path(__file__).parent / "results",
        help="where process_peak.json goes",
    )
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        model = args.model or build_model(args.work or Path(tmp))
        mhe_edge = [sys.executable, "-m", "mhe_edge"]
        runs = {
            "plain session": [
                sys.executable,
                "-c",
                PLAIN_SESSION,
                str(model),
                str(args.prompt),
                str(args.new_tokens),
                str(Path(__file__).parent),  # where inplace_cache.py's plain loop lives
            ],
            "mhe-edge generate": mhe_edge
            + [
                "generate",
                str(model),
                "--prompt",
                ",".join(["1"] * args.prompt),
                "--max-new-tokens",
                str(args.new_tokens),
            ],
            "mhe-edge profile": mhe_edge
            + [
                "profile",
                str(model),
                "--seq-len",
                str(args.prompt),
                "--new-tokens",
                str(args.new_tokens),
                "--json",
            ],
        }
        peaks: dict[str, list[float]] = {name: [] for name in runs}
        for _ in range(args.rounds):
            for name, command in runs.items():
                peaks[name].append(peak_mib(command))

    # the plain session's load is bimodal: its median can sit on either mode, so its lowest is shown too
    plain, plain_low = statistics.median(peaks["plain session"]), min(peaks["plain session"])
    rows = []
    print(
        f"{model.name}: {model.stat().st_size / 2**20:,.0f} MiB, {args.rounds} rounds, peak resident MiB\n"
    )
    print(
        "| process | min | median | max | median vs plain median | max vs plain min |\n"
        "| --- | ---: | ---: | ---: | ---: | ---: |"
    )
    for name, values in peaks.items():
        median, worst = statistics.median(values), max(values)
        rows.append(
            dict(
                process=name,
                peaks_mib=values,
                median_mib=median,
                vs_plain=median / plain,
                worst_vs_plain_low=worst / plain_low,
            )
        )
        print(
            f"| {name} | {min(values):,.0f} | {median:,.0f} | {worst:,.0f} | {median / plain:.2f}x"
            f" | {worst / plain_low:.2f}x |"
        )
    args.out.mkdir(parents=True, exist_ok=True)
    result = dict(
        model=model.name,
        file_bytes=model.stat().st_size,
        rounds=args.rounds,
        prompt=args.prompt,
        new_tokens=args.new_tokens,
        rows=rows,
    )
    (args.out / "process_peak.json").write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
