"""mhe-edge beside onnxruntime-genai's model builder at real sizes, on identical transformers-written folders
(random weights from the configs below, `save_pretrained`; nothing is downloaded):

  A  Qwen2-0.5B's shape (24 layers, width 896, 14 query / 2 KV heads, MLP 4864, vocabulary 151936, tied)
  B  TinyLlama-1.1B's shape (22 layers, width 2048, 32 query / 4 KV heads, MLP 5632, vocabulary 32000)
  tiny  a 2-layer Llama of width 256, to try the script in a minute

For each shape: build time and peak (mhe-edge: export, then optimize --target ort, and --int4; the builder:
fp32 and int4), file sizes, graph nodes, then each model's load + first token (prefill) time, decode
ms/token and process peak at batch 1 (and --batches), every run a fresh process, rounds interleaved.
Every step runs under `nice -n 10` in its own process; peaks are each process's VmHWM.

    python benchmarks/scale.py [--shapes tiny,A] [--rounds 1] [--batches 1] [--work DIR]

Writes benchmarks/results/scale.json and prints Markdown tables. On 2 cores one round of A takes about
3 minutes after a 2-minute build, B twice that; B's builder int4 step peaks at ~10 GiB and mhe-edge's
steps at most at 1.4x the fp32 weights (A 1.9 GB, B 4.4 GB).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))

SHAPES = {
    "tiny": (
        "llama",
        dict(
            hidden_size=256,
            num_hidden_layers=2,
            num_attention_heads=8,
            num_key_value_heads=2,
            intermediate_size=512,
            vocab_size=1000,
            max_position_embeddings=2048,
            tie_word_embeddings=False,
        ),
    ),
    "A": (
        "qwen2",
        dict(
            hidden_size=896,
            num_hidden_layers=24,
            num_attention_heads=14,
            num_key_value_heads=2,
            intermediate_size=4864,
            vocab_size=151936,
            max_position_embeddings=32768,
            rope_theta=1_000_000.0,
            rms_norm_eps=1e-6,
            tie_word_embeddings=True,
        ),
    ),
    "B": (
        "llama",
        dict(
            hidden_size=2048,
            num_hidden_layers=22,
            num_attention_heads=32,
            num_key_value_heads=4,
            intermediate_size=5632,
            vocab_size=32000,
            max_position_embeddings=2048,
            rms_norm_eps=1e-5,
            tie_word_embeddings=False,
        ),
    ),
}


def make_folder(kind: str, fields: dict, folder: Path) -> None:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

    from mhe_edge.text.tokenizer import byte_tokenizer

    config_class, model_class = {
        "llama": (LlamaConfig, LlamaForCausalLM),
        "qwen2": (Qwen2Config, Qwen2ForCausalLM),
    }[kind]
    torch.manual_seed(0)
    config = config_class(bos_token_id=0, eos_token_id=0, **fields)
    model_class(config).save_pretrained(folder)
    byte_tokenizer().save(folder)  # the builder copies a tokenizer; token ids are what is measured


def timed(command: list[str]) -> dict:
    """Run `command` niced in a fresh process; its wall seconds and peak RSS (GNU time's %M)."""
    started = time.perf_counter()
    done = subprocess.run(
        ["/usr/bin/time", "-f", "PEAK_KB %M", "nice", "-n", "10", *command],
        capture_output=True,
        text=True,
    )
    seconds = time.perf_counter() - started
    peak = next(
        (int(line.split()[1]) for line in done.stderr.splitlines() if line.startswith("PEAK_KB")),
        0,
    )
    if done.returncode:
        tail = [line for line in done.stderr.splitlines() if not line.startswith("PEAK_KB")][-3:]
        raise RuntimeError(f"{command[:4]} failed: {tail}")
    return {"seconds": seconds, "peak_mib": peak / 1024, "stdout": done.stdout}


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "mhe_edge", *args]


def builder(folder: Path, out: Path, precision: str, cache: Path) -> list[str]:
    return [
        sys.executable,
        "-m",
        "onnxruntime_genai.models.builder",
        "-i",
        str(folder),
        "-o",
        str(out),
        "-p",
        precision,
        "-e",
        "cpu",
        "-c",
        str(cache),
    ]


def nodes(path: Path) -> int:
    from mhe_edge.files import load_onnx_header

    return len(load_onnx_header(path).graph.node)


def disk_mib(path: Path) -> float:
    files = [path] if path.is_file() else list(path.iterdir())
    if path.is_file():
        files += list(path.parent.glob(path.name + ".data"))
    return sum(f.stat().st_size for f in files if f.is_file()) / 2**20


def build(shape: str, work: Path) -> dict:
    kind, fields = SHAPES[shape]
    root = work / shape
    root.mkdir(parents=True, exist_ok=True)
    folder = root / "folder"
    if not (folder / "config.json").exists():
        make_folder(kind, fields, folder)
    steps: dict[str, dict] = {}
    plan = {
        "export": (cli("export", str(folder), "-o", str(root / "raw.onnx"), "--force"), None),
        "optimize ort": (
            cli(
                "optimize",
                str(root / "raw.onnx"),
                "-o",
                str(root / "ort.onnx"),
                "--target",
                "ort",
                "--force",
            ),
            root / "ort.onnx",
        ),
        "optimize ort int4": (
            cli(
                "optimize",
                str(root / "raw.onnx"),
                "-o",
                str(root / "int4.onnx"),
                "--target",
                "ort",
                "--int4",
                "--int4-block-size",
                "32",
                "--force",
            ),
            root / "int4.onnx",
        ),
        "builder fp32": (builder(folder, root / "builder-fp32", "fp32", root / "cache"), None),
        "builder int4": (builder(folder, root / "builder-int4", "int4", root / "cache"), None),
    }
    for name, (command, _) in plan.items():
        print(f"{shape}: {name} ...", file=sys.stderr, flush=True)
        result = timed(command)
        result.pop("stdout")
        steps[name] = result
        print(f"{shape}: {name}: {result}", file=sys.stderr, flush=True)
    models = {
        "mhe-edge fp32": ("mhe-edge", root / "ort.onnx"),
        "mhe-edge int4": ("mhe-edge", root / "int4.onnx"),
        "builder fp32": ("genai", root / "builder-fp32"),
        "builder int4": ("genai", root / "builder-int4"),
    }
    files = {
        name: {
            "disk_mib": disk_mib(path),
            "nodes": nodes(path if path.is_file() else path / "model.onnx"),
        }
        for name, (_, path) in models.items()
    }
    return {
        "steps": steps,
        "files": files,
        "models": {k: [r, str(p)] for k, (r, p) in models.items()},
    }


def run_genai(path: str, batch: int, prompt_len: int, chunk: int, new_tokens: int) -> dict:
    """onnxruntime-genai on a builder folder: the prompt (in chunks at batch 1), then greedy steps."""
    import onnxruntime_genai as og

    vocab = json.loads((Path(path) / "genai_config.json").read_text())["model"]["vocab_size"]
    model = og.Model(path)
    params = og.GeneratorParams(model)
    params.set_search_options(
        max_length=prompt_len + new_tokens, batch_size=batch, min_length=prompt_len + new_tokens
    )
    generator = og.Generator(model, params)
    prompt = np.random.default_rng(0).integers(1, vocab, (batch, prompt_len)).astype(np.int32)
    started = time.perf_counter()
    if batch == 1:
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
    return {"prefill_s": prefill, "decode_ms": 1000 * float(np.median(steps))}


def child(spec: dict) -> None:
    from peers import run_mhe_edge

    from mhe_edge.runtime.memory import peak_rss_bytes

    started = time.perf_counter()
    runner = run_mhe_edge if spec["runner"] == "mhe-edge" else run_genai
    result = runner(spec["path"], spec["batch"], spec["prompt"], spec["chunk"], spec["new_tokens"])
    decode_s = result["decode_ms"] / 1000 * spec["new_tokens"]
    result["load_and_first_token_s"] = time.perf_counter() - started - decode_s
    result["peak_rss_mib"] = peak_rss_bytes() / 2**20
    print(json.dumps(result))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--shapes", default="tiny")
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--batches", default="1")
    parser.add_argument("--prompt", type=int, default=128)
    parser.add_argument("--chunk", type=int, default=128)
    parser.add_argument("--new-tokens", type=int, default=16)
    parser.add_argument(
        "--work", type=Path, default=Path(__file__).parent / "results" / "scale-work"
    )
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(json.loads(args.child))
    report = {"settings": vars(args) | {"work": str(args.work), "out": str(args.out)}, "shapes": {}}
    batches = [int(b) for b in args.batches.split(",")]
    for shape in args.shapes.split(","):
        built = build(shape, args.work)
        runs: dict[str, list[dict]] = {}
        for _ in range(args.rounds):  # interleaved: every model and batch once per round
            for batch in batches:
                for name, (runner, path) in built["models"].items():
                    job = dict(
                        runner=runner,
                        path=path,
                        batch=batch,
                        prompt=args.prompt,
                        chunk=args.chunk,
                        new_tokens=args.new_tokens,
                    )
                    result = timed([sys.executable, __file__, "--child", json.dumps(job)])
                    sample = json.loads(result["stdout"].strip().splitlines()[-1])
                    runs.setdefault(f"{name} b{batch}", []).append(sample)
                    print(f"{shape}: {name} batch {batch}: {sample}", file=sys.stderr, flush=True)
        built["runs"] = {
            key: {
                "decode_ms_min": min(r["decode_ms"] for r in samples),
                "decode_ms_median": float(np.median([r["decode_ms"] for r in samples])),
                "first_token_s_median": float(
                    np.median([r["load_and_first_token_s"] for r in samples])
                ),
                "peak_rss_mib": max(r["peak_rss_mib"] for r in samples),
                "rounds": len(samples),
            }
            for key, samples in runs.items()
        }
        report["shapes"][shape] = built
        print_tables(shape, built)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "scale.json").write_text(json.dumps(report, indent=2))


def print_tables(shape: str, built: dict) -> None:
    print(f"\n### {shape}\n\n| step | seconds | peak MiB |\n| --- | ---: | ---: |")
    for name, step in built["steps"].items():
        print(f"| {name} | {step['seconds']:.0f} | {step['peak_mib']:,.0f} |")
    print(
        "\n| model | file MiB | nodes | run | first token s | decode ms/token (min / median) | peak MiB |"
    )
    print("| --- | ---: | ---: | --- | ---: | ---: | ---: |")
    for key, run in built["runs"].items():
        name = key.rsplit(" b", 1)[0]
        files = built["files"][name]
        print(
            f"| {name} | {files['disk_mib']:,.0f} | {files['nodes']:,} | batch {key.rsplit(' b', 1)[1]} |"
            f" {run['first_token_s_median']:.2f} | {run['decode_ms_min']:.2f} / {run['decode_ms_median']:.2f} |"
            f" {run['peak_rss_mib']:,.0f} |"
        )


if __name__ == "__main__":
    main()
