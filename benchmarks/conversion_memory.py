"""Peak memory of `mhe-edge convert` against the size of the source's weights.

A mid-size Llama (GQA) folder is written by transformers with random weights (float32 and bfloat16), then
converted in a fresh process. Measured there: the resident set (/proc/self/statm, sampled every 2 ms by a
thread) at its highest during the conversion, less what it was just before, after a warm-up conversion of
a tiny model (imports, LAPACK: a fixed cost, also reported); that is what the conversion itself needed at
its peak, as a multiple of the source's weight bytes (goal: <= 1.5x). Mapped file pages count too.

    python benchmarks/conversion_memory.py                 # ~1 minute on 2 cores
    python benchmarks/conversion_memory.py --layers 16 --d-model 1024

Writes benchmarks/results/conversion_memory.json.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

CHILD = """
import json, os, sys, threading, time
import torch, safetensors.torch, mhe_edge.workflows.convert as c
page = os.sysconf("SC_PAGE_SIZE")
def rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * page
cold = rss()
# Warm up on a tiny model: imports, LAPACK and the safetensors writer load once, whatever the model's size.
c.convert(sys.argv[4], sys.argv[2] + ".warm", attention=sys.argv[3], init="svd")
baseline, peak, running = rss(), [0], [True]
def sample():
    while running[0]:
        peak[0] = max(peak[0], rss())
        time.sleep(0.002)
watcher = threading.Thread(target=sample)
watcher.start()
c.convert(sys.argv[1], sys.argv[2], attention=sys.argv[3], init="svd")
running[0] = False
watcher.join()
print(json.dumps({"cold": cold, "baseline": baseline, "peak": max(peak[0], rss())}))
"""


def build_source(folder: Path, args, dtype) -> int:
    import torch
    import transformers

    torch.manual_seed(0)
    config = transformers.LlamaConfig(
        hidden_size=args.d_model,
        intermediate_size=args.d_model * 11 // 4,
        num_hidden_layers=args.layers,
        num_attention_heads=args.d_model // 64,
        num_key_value_heads=max(1, args.d_model // 256),
        max_position_embeddings=2048,
        vocab_size=args.vocab,
    )
    model = transformers.LlamaForCausalLM(config).to(dtype)
    model.save_pretrained(folder)
    return sum(p.stat().st_size for p in folder.glob("*.safetensors"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--d-model", type=int, default=768)
    parser.add_argument("--vocab", type=int, default=16_000)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args()
    import torch

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tiny = Path(tmp) / "tiny"
        build_source(tiny, argparse.Namespace(d_model=128, layers=1, vocab=300), torch.float32)
        for dtype in (torch.float32, torch.bfloat16):
            name = str(dtype).removeprefix("torch.")
            source = Path(tmp) / f"llama-{name}"
            weights = build_source(source, args, dtype)
            for attention in ("mhe-mul", "mhe-add"):
                target = Path(tmp) / f"{name}-{attention}"
                done = subprocess.run(
                    [sys.executable, "-c", CHILD, str(source), str(target), attention, str(tiny)],
                    capture_output=True,
                    text=True,
                    check=True,
                )
                measured = json.loads(done.stdout.strip().splitlines()[-1])
                peak = measured["peak"] - measured["baseline"]
                fixed = measured["baseline"] - measured["cold"]
                written = sum(p.stat().st_size for p in target.glob("*.safetensors"))
                rows.append(
                    {
                        "dtype": name,
                        "attention": attention,
                        "source_weight_bytes": weights,
                        "output_weight_bytes": written,
                        "peak_bytes": peak,
                        "peak_over_source": peak / weights,
                        "fixed_bytes": fixed,
                    }
                )
                print(
                    f"{name:9} {attention:8} source {weights / 2**20:7.1f} MiB, output"
                    f" {written / 2**20:7.1f} MiB, conversion peak {peak / 2**20:7.1f} MiB"
                    f" = {peak / weights:.2f}x the source's weights (+ {fixed / 2**20:.0f} MiB fixed)"
                )
    args.out.mkdir(exist_ok=True)
    shape = {"layers": args.layers, "d_model": args.d_model, "vocab": args.vocab}
    (args.out / "conversion_memory.json").write_text(
        json.dumps({"shape": shape, "rows": rows}, indent=2) + "\n"
    )


if __name__ == "__main__":
    main()
