"""onnxruntime-genai decode time per token with and without past_present_share_buffer (in-place cache).

Packages one MHE decoder twice (`mhe-edge package --target ort`, with and without `--share-buffer`),
prefills a long prompt with onnxruntime-genai, then times each decode step. Prints a table, writes JSON.

    .venv/bin/python benchmarks/genai_share_buffer.py [--preset small] [--context 2048] [--new-tokens 64]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np


def decode_ms(folder: Path, context: int, new_tokens: int, runs: int) -> dict:
    import onnxruntime_genai as og

    model = og.Model(str(folder))
    prompt = np.random.default_rng(0).integers(0, 1000, (1, context)).astype(np.int32)
    per_run = []
    for _ in range(runs + 1):  # the first run warms up
        params = og.GeneratorParams(model)
        params.set_search_options(max_length=context + new_tokens)
        generator = og.Generator(model, params)
        generator.append_tokens(prompt)
        steps = []
        while not generator.is_done():
            start = time.perf_counter()
            generator.generate_next_token()
            steps.append(time.perf_counter() - start)
        per_run.append(1000 * statistics.median(steps))
    return {"decode_ms_per_token": statistics.median(per_run[1:]), "runs": per_run[1:]}


def main() -> None:
    import mhe_edge
    from mhe_edge.edge import package_genai
    from mhe_edge.exporters import export

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="small")
    parser.add_argument("--attention", default="mhe-mul")
    parser.add_argument("--context", type=int, default=2048)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument(
        "--json", type=Path, default=Path(__file__).parent / "results" / "genai_share_buffer.json"
    )
    args = parser.parse_args()
    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        config = mhe_edge.preset_config(args.preset, attention=args.attention)
        exported = Path(tmp) / "model.onnx"
        export(mhe_edge.build_model(config, seed=0), exported)
        for share in (False, True):
            folder = Path(tmp) / f"share-{share}"
            package_genai(exported, folder, target="ort", share_buffer=share)
            rows["share_buffer" if share else "copy"] = decode_ms(
                folder, args.context, args.new_tokens, args.runs
            )
    ratio = rows["share_buffer"]["decode_ms_per_token"] / rows["copy"]["decode_ms_per_token"]
    print(
        f"{args.preset} {args.attention} decoder, onnxruntime-genai, prompt {args.context},"
        f" {args.new_tokens} new tokens"
    )
    for name, row in rows.items():
        print(
            f"  {name:13} decode {row['decode_ms_per_token']:.2f} ms/token (median of {args.runs}"
            f" runs: {', '.join(f'{r:.2f}' for r in row['runs'])})"
        )
    print(f"  share_buffer / copy = {ratio:.2f}")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(
        json.dumps(
            {"settings": {k: str(v) for k, v in vars(args).items()}, "rows": rows, "ratio": ratio},
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
