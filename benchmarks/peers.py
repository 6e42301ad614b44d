"""mhe-edge beside its peers, on the same work: onnxruntime-genai's model builder, and Hugging Face Optimum
where it installs.

Models, all the same shape (6 layers, width 512, 8 query heads of 64, SwiGLU MLP of 1536, RMSNorm, RoPE,
vocabulary 8192, random weights; nothing is downloaded):
  (a) mhe-edge's MHE-MUL, MQA and MHA decoders, exported and optimized `--target ort --ort-query-seqlens`,
      run by mhe-edge's runtime (IO binding, the cache updated in place);
  (b) Llama folders of that shape built with transformers (an MHA twin and an MQA twin, `save_pretrained`),
      converted by onnxruntime-genai's model builder to fp32 and int4, run by onnxruntime-genai;
  (c) mhe-edge's own export of those Llama folders (`export --optimize --target ort`), run by mhe-edge, so
      both toolchains run the identical model;
  (d) Optimum's ONNX export of the Llama folders, if `optimum` is importable (it is not installed here).
The work: batch 1 and batch 4, a 2048-token prompt in chunks of 128 (onnxruntime-genai takes a chunked
prompt only at batch 1: at batch 4 it prefills whole), then 32 decode steps. Every run is a fresh process
(its peak RSS is its own); rounds are interleaved. Reported: decode ms/token (min and median over rounds of
each run's median), prefill seconds, peak RSS, and decode time relative to the builder's fp32 MQA model.

    python benchmarks/peers.py [--rounds 2] [--batches 1,4] [--work DIR]

Writes benchmarks/results/peers.json and prints a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

SHAPE = dict(n_layers=6, d_model=512, n_heads=8, d_ff=1536, vocab_size=8192, max_seq_len=4096)
LLAMA = dict(
    hidden_size=512,
    num_hidden_layers=6,
    num_attention_heads=8,
    head_dim=64,
    intermediate_size=1536,
    vocab_size=8192,
    max_position_embeddings=4096,
    rms_norm_eps=1e-6,
    rope_theta=10000.0,
    tie_word_embeddings=False,
    bos_token_id=0,
    eos_token_id=0,
    attention_bias=False,
    mlp_bias=False,
)


def prepare(work: Path) -> list[dict]:
    """Every model to run: {"name", "runner", "path"}; built once into `work` and reused."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    import mhe_edge
    from mhe_edge.text.tokenizer import byte_tokenizer

    work.mkdir(parents=True, exist_ok=True)
    models = []
    for kind in ("mhe-mul", "mqa", "mha"):
        path = work / f"mhe-edge-{kind}.onnx"
        if not path.exists():
            config = mhe_edge.preset_config(
                "small",
                attention=kind,
                position="rope",
                norm="rmsnorm",
                mlp="swiglu",
                qkv_bias=False,
                out_bias=False,
                mlp_bias=False,
                layer_norm_eps=1e-6,
                **SHAPE,
            )
            mhe_edge.export(
                mhe_edge.build_model(config, seed=0), work / f"{kind}.raw.onnx", force=True
            )
            mhe_edge.optimize(work / f"{kind}.raw.onnx", path, target="ort", ort_query_seqlens=True)
        models.append(
            {"name": f"mhe-edge {kind.upper()} (ort)", "runner": "mhe-edge", "path": str(path)}
        )
    for twin, kv_heads in (("mqa", 1), ("mha", 8)):
        folder = work / f"llama-{twin}"
        if not folder.exists():
            torch.manual_seed(0)
            LlamaForCausalLM(LlamaConfig(num_key_value_heads=kv_heads, **LLAMA)).save_pretrained(
                folder
            )
            byte_tokenizer().save(
                folder
            )  # the builder copies a tokenizer; token ids are what is measured here
        ours = work / f"llama-{twin}.mhe-edge.onnx"
        if not ours.exists():
            mhe_edge.export(folder, work / f"llama-{twin}.raw.onnx", force=True)
            mhe_edge.optimize(
                work / f"llama-{twin}.raw.onnx", ours, target="ort", ort_query_seqlens=True
            )
        models.append(
            {
                "name": f"mhe-edge on Llama-{twin.upper()} (ort)",
                "runner": "mhe-edge",
                "path": str(ours),
            }
        )
        for precision in ("fp32", "int4"):
            built = work / f"llama-{twin}.builder.{precision}"
            if not (built / "genai_config.json").exists():
                subprocess.run(
                    [
                        sys.executable,
                        "-m",
                        "onnxruntime_genai.models.builder",
                        "-i",
                        str(folder),
                        "-o",
                        str(built),
                        "-p",
                        precision,
                        "-e",
                        "cpu",
                        "-c",
                        str(work / "cache"),
                    ],
                    check=True,
                    capture_output=True,
                )
            models.append(
                {
                    "name": f"builder Llama-{twin.upper()} {precision}",
                    "runner": "genai",
                    "path": str(built),
                }
            )
    try:
        import optimum  # noqa: F401
    except ImportError:
        print("Optimum is not installed here: its row is left out", file=sys.stderr)
    return models


def run_mhe_edge(path: str, batch: int, prompt_len: int, chunk: int, new_tokens: int) -> dict:
    """Decode as `mhe-edge generate` does, in this (fresh) process: glibc's mmap threshold fixed first."""
    from mhe_edge.runtime.driver import ExportedModel
    from mhe_edge.runtime.memory import return_large_blocks_to_the_os

    return_large_blocks_to_the_os()
    model = ExportedModel(path)
    prompt = np.random.default_rng(0).integers(1, model.config.vocab_size, (batch, prompt_len))
    started = time.perf_counter()
    last, cache = model.prefill(prompt, chunk, capacity=prompt_len + new_tokens)
    prefill = time.perf_counter() - started
    token, steps = last.argmax(-1)[:, None], []
    for _ in range(new_tokens):
        t0 = time.perf_counter()
        logits, cache = model.step(token, cache)
        token = logits[:, -1:].argmax(-1)
        steps.append(time.perf_counter() - t0)
    return {
        "prefill_s": prefill,
        "decode_ms": 1000 * float(np.median(steps)),
        "cache": "in place" if cache.in_place else "copied",
    }


def run_genai(path: str, batch: int, prompt_len: int, chunk: int, new_tokens: int) -> dict:
    import onnxruntime_genai as og

    model = og.Model(path)
    params = og.GeneratorParams(model)
    params.set_search_options(
        max_length=prompt_len + new_tokens, batch_size=batch, min_length=prompt_len + new_tokens
    )
    generator = og.Generator(model, params)
    prompt = np.random.default_rng(0).integers(1, 8192, (batch, prompt_len)).astype(np.int32)
    started = time.perf_counter()
    if batch == 1:  # chunked, as mhe-edge prefills
        for start in range(0, prompt_len, chunk):
            generator.append_tokens(prompt[:, start : start + chunk])
    else:  # onnxruntime-genai refuses a chunked prompt at batch > 1
        generator.append_tokens(prompt)
    prefill = time.perf_counter() - started
    steps = []
    for _ in range(new_tokens):
        t0 = time.perf_counter()
        generator.generate_next_token()
        steps.append(time.perf_counter() - t0)
    return {
        "prefill_s": prefill,
        "decode_ms": 1000 * float(np.median(steps)),
        "cache": "genai",
        "prefill_chunked": batch == 1,
    }


def child(spec: dict) -> None:
    runner = run_mhe_edge if spec["runner"] == "mhe-edge" else run_genai
    result = runner(spec["path"], spec["batch"], spec["prompt"], spec["chunk"], spec["new_tokens"])
    from mhe_edge.runtime.memory import peak_rss_bytes

    result["peak_rss_mib"] = (
        peak_rss_bytes() / 2**20
    )  # this process's VmHWM (getrusage's maxrss survives the fork from the parent)
    print(json.dumps(result))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--batches", default="1,4")
    parser.add_argument("--prompt", type=int, default=2048)
    parser.add_argument("--chunk", type=int, default=128)
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument(
        "--work", type=Path, default=Path(__file__).parent / "results" / "peers-work"
    )
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(json.loads(args.child))
    models = prepare(args.work)
    batches = [int(b) for b in args.batches.split(",")]
    samples: dict[tuple[str, int], list[dict]] = {}
    for round_index in range(args.rounds):  # interleaved: every model and batch once per round
        for batch in batches:
            for spec in models:
                job = {
                    **spec,
                    "batch": batch,
                    "prompt": args.prompt,
                    "chunk": args.chunk,
                    "new_tokens": args.new_tokens,
                }
                done = subprocess.run(
                    [sys.executable, __file__, "--child", json.dumps(job)],
                    capture_output=True,
                    text=True,
                )
                if done.returncode:
                    print(
                        f"{spec['name']} at batch {batch} failed: {done.stderr.strip().splitlines()[-1:]}",
                        file=sys.stderr,
                    )
                    continue
                samples.setdefault((spec["name"], batch), []).append(
                    json.loads(done.stdout.strip().splitlines()[-1])
                )
                print(
                    f"round {round_index + 1}: {spec['name']} batch {batch}: {samples[(spec['name'], batch)][-1]}",
                    file=sys.stderr,
                    flush=True,
                )
    rows = []
    for (name, batch), runs in samples.items():
        decode = [r["decode_ms"] for r in runs]
        rows.append(
            {
                "model": name,
                "batch": batch,
                "decode_ms_min": min(decode),
                "decode_ms_median": float(np.median(decode)),
                "prefill_s_median": float(np.median([r["prefill_s"] for r in runs])),
                "peak_rss_mib": max(r["peak_rss_mib"] for r in runs),
                "cache": runs[0]["cache"],
                "rounds": len(runs),
            }
        )
    for row in rows:
        base = next(
            (
                r
                for r in rows
                if r["model"] == "builder Llama-MQA fp32" and r["batch"] == row["batch"]
            ),
            None,
        )
        row["decode_vs_builder_mqa"] = (
            row["decode_ms_median"] / base["decode_ms_median"] if base else None
        )
    print(
        "| model | batch | decode ms/token (min / median) | vs builder MQA fp32 | prefill s | peak RSS MiB |"
    )
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for row in sorted(rows, key=lambda r: (r["batch"], r["decode_ms_median"])):
        ratio = f"{row['decode_vs_builder_mqa']:.2f}x" if row["decode_vs_builder_mqa"] else "n/a"
        print(
            f"| {row['model']} | {row['batch']} | {row['decode_ms_min']:.2f} /"
            f" {row['decode_ms_median']:.2f} | {ratio} |"
            f" {row['prefill_s_median']:.2f} | {row['peak_rss_mib']:,.0f} |"
        )
    args.out.mkdir(parents=True, exist_ok=True)
    settings = {
        "shape": SHAPE,
        "prompt": args.prompt,
        "chunk": args.chunk,
        "new_tokens": args.new_tokens,
        "rounds": args.rounds,
        "batches": batches,
    }
    (args.out / "peers.json").write_text(
        json.dumps({"settings": settings, "rows": rows}, indent=2) + "\n"
    )


if __name__ == "__main__":
    main()
