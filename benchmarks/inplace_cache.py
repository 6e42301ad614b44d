"""The in-place KV cache against a plain ONNX Runtime loop, on one file, in one interleaved run.

The file: a `small` MHE-MUL decoder (6 layers x 512, 8 heads; random weights), exported and optimized with
`--target ort --ort-query-seqlens`. The work: batch 4, a 2048-token prompt in chunks of 128, then decode.
  - mhe-edge: `ExportedModel` as `generate` and `profile` drive it: IO binding, one preallocated buffer per
    layer bound as both past and present, so GroupQueryAttention writes each new position in place;
  - plain loop: `session.run` with NumPy feeds, each present fed back as the next past (ONNX Runtime
    allocates a new, one-longer cache every step, and the previous one is copied into it).
Rounds alternate the two; reported: decode ms/token (min, median over all steps), the ratio of medians, and
the bandwidth floor of a step (every weight and the cache read once at the measured bandwidth).

    python benchmarks/inplace_cache.py [--kinds mhe-mul,mha] [--rounds 3] [--new-tokens 32]

Writes benchmarks/results/inplace_cache.json.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np


def build(kind: str, folder: Path) -> Path:
    import mhe_edge

    model = mhe_edge.build_model(mhe_edge.preset_config("small", attention=kind), seed=0)
    mhe_edge.export(model, folder / f"{kind}.onnx")
    return Path(
        mhe_edge.optimize(
            folder / f"{kind}.onnx",
            folder / f"{kind}.ort.onnx",
            target="ort",
            ort_query_seqlens=True,
        ).output
    )


def in_place_decode(model, prompt, chunk, new_tokens) -> list[float]:
    last, cache = model.prefill(prompt, chunk, capacity=prompt.shape[1] + new_tokens)
    assert cache.in_place
    token, times = last.argmax(-1)[:, None], []
    for _ in range(new_tokens):
        started = time.perf_counter()
        logits, cache = model.step(token, cache)
        token = logits[:, -1:].argmax(-1)
        times.append(time.perf_counter() - started)
    return times


def plain_loop_decode(session, config, prompt, chunk, new_tokens) -> list[float]:
    names = [i.name for i in session.get_inputs()]
    pasts = [n for n in names if n.startswith("past_key_values.")]
    outputs = [o.name for o in session.get_outputs()]
    batch = prompt.shape[0]
    cache = {n: np.zeros((batch, config.kv_heads, 0, config.head_dim), np.float32) for n in pasts}
    seen = 0

    def run(ids):
        nonlocal cache, seen
        seen += ids.shape[1]
        result = dict(
            zip(
                outputs,
                session.run(
                    None,
                    {"input_ids": ids, "attention_mask": np.ones((batch, seen), np.int64), **cache},
                ),
            )
        )
        cache = {n: result[n.replace("past_key_values.", "present.")] for n in pasts}
        return result["logits"]

    for start in range(0, prompt.shape[1], chunk):
        logits = run(prompt[:, start : start + chunk])
    token, times = logits[:, -1:].argmax(-1), []
    for _ in range(new_tokens):
        started = time.perf_counter()
        logits = run(token)
        token = logits[:, -1:].argmax(-1)
        times.append(time.perf_counter() - started)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--kinds", default="mhe-mul")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--prompt", type=int, default=2048)
    parser.add_argument("--chunk", type=int, default=128)
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args()

    from mhe_edge.accounting import kv_cache_bytes
    from mhe_edge.runtime.driver import ExportedModel
    from mhe_edge.runtime.memory import read_bandwidth_bytes_per_s
    from mhe_edge.sessions import create_session

    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for kind in args.kinds.split(","):
            path = build(kind, Path(tmp))
            model, session = ExportedModel(path), create_session(path)
            prompt = np.random.default_rng(0).integers(
                0, model.config.vocab_size, (args.batch, args.prompt)
            )
            samples = {"in place": [], "plain loop": []}
            for _ in range(args.rounds):  # interleaved
                samples["in place"] += in_place_decode(model, prompt, args.chunk, args.new_tokens)
                samples["plain loop"] += plain_loop_decode(
                    session, model.config, prompt, args.chunk, args.new_tokens
                )
            stats = {
                k: {
                    "min_ms": 1000 * min(v),
                    "median_ms": 1000 * float(np.median(v)),
                    "steps": len(v),
                }
                for k, v in samples.items()
            }
            step_bytes = model.parameter_bytes + kv_cache_bytes(
                model.config, args.batch, args.prompt + args.new_tokens // 2
            )
            floor_ms = 1000 * step_bytes / read_bandwidth_bytes_per_s()
            row = {
                "kind": kind,
                **{f"{k} decode": v for k, v in stats.items()},
                "ratio_in_place_to_plain": stats["in place"]["median_ms"]
                / stats["plain loop"]["median_ms"],
                "bandwidth_floor_ms": floor_ms,
                "floor_fraction_in_place": floor_ms / stats["in place"]["median_ms"],
                "floor_fraction_plain": floor_ms / stats["plain loop"]["median_ms"],
            }
            results.append(row)
            print(
                f"{kind}: decode in place {stats['in place']['median_ms']:.2f} ms/token (min"
                f" {stats['in place']['min_ms']:.2f}),"
                f" plain loop {stats['plain loop']['median_ms']:.2f} (min {stats['plain loop']['min_ms']:.2f}):"
                f" {row['ratio_in_place_to_plain']:.2f}x; bandwidth floor {floor_ms:.2f} ms"
                f" ({row['floor_fraction_in_place']:.0%} reached in place, {row['floor_fraction_plain']:.0%} plain)",
                flush=True,
            )
    args.out.mkdir(parents=True, exist_ok=True)
    settings = {k: getattr(args, k) for k in ("batch", "prompt", "chunk", "new_tokens", "rounds")}
    (args.out / "inplace_cache.json").write_text(
        json.dumps({"settings": settings, "rows": results}, indent=2) + "\n"
    )


if __name__ == "__main__":
    main()
