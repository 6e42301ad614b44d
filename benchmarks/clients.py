"""The clients people already use, on our packages, for real: token equality with `mhe-edge generate` and
decode time per client. Prints a table and writes JSON.

    .venv/bin/python benchmarks/clients.py --install          # once: npm side and Optimum's venv (below)
    .venv/bin/python benchmarks/clients.py [--model FOLDER] [--new-tokens 32] [--out benchmarks/results/clients.json]

Clients: transformers (the `mhe-edge fold` checkpoint, AutoModelForCausalLM), onnxruntime-genai
(`package --format genai`), transformers.js in Node (`--format transformers-js`), Optimum's
ORTModelForCausalLM in its own venv (`--format optimum`; Optimum pins transformers < 4.58, ours is newer),
and the web page in headless Chromium (examples/web). Each runs one prompt alone and, where the client
batches, two prompts as one left-padded batch; a row is "equal" when every token equals mhe-edge's. Decode
time is the client's own generate call divided by the new tokens (prefill included, tiny models: it says
how each client's overhead compares, not how fast a large model decodes).

`--install` puts the npm packages (@huggingface/transformers with ONNXRUNTIME_NODE_INSTALL=skip, whose
install script would fetch CUDA binaries; playwright-core) in benchmarks/results/clients/node and creates
benchmarks/results/clients/optimum (optimum-onnx, onnxruntime, and torch as constraints.txt pins it: pip's
default Linux torch is the CUDA build). Chromium is Debian's `chromium` package.
A client that is not installed gets a row saying so.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
CLIENTS = HERE / "results" / "clients"
NODE_DIR = CLIENTS / "node"
OPTIMUM = CLIENTS / "optimum"
CHROMIUM = "/usr/bin/chromium"
TEXT = "The "


def install() -> None:
    NODE_DIR.mkdir(parents=True, exist_ok=True)
    if not (NODE_DIR / "package.json").exists():
        subprocess.run(["npm", "init", "-y"], cwd=NODE_DIR, check=True, capture_output=True)
    env = {**os.environ, "ONNXRUNTIME_NODE_INSTALL": "skip"}
    subprocess.run(
        ["npm", "install", "--silent", "@huggingface/transformers", "playwright-core"],
        cwd=NODE_DIR,
        env=env,
        check=True,
    )
    if not (OPTIMUM / "bin" / "python").exists():
        subprocess.run([sys.executable, "-m", "venv", str(OPTIMUM)], check=True)
        # torch as constraints.txt pins it (the CPU build here): pip's default Linux torch is the CUDA
        # build, gigabytes of libraries a CPU check never loads. Only that pin: Optimum pins its own
        # transformers, older than ours.
        torch = next(
            line.strip()
            for line in (ROOT / "constraints.txt").read_text().splitlines()
            if line.startswith("torch==")
        )
        subprocess.run(
            [str(OPTIMUM / "bin" / "pip"), "install", "-q", torch, "optimum-onnx", "onnxruntime"],
            check=True,
        )


def build_model(folder: Path, model: Path | None) -> Path:
    """A model folder with a tokenizer: the given one, or a seeded random MHE-MUL with a byte tokenizer."""
    if model is not None:
        return model
    import mhe_edge
    from mhe_edge.models.folder import save_folder
    from mhe_edge.text.tokenizer import byte_tokenizer

    config = mhe_edge.preset_config("tiny", attention="mhe-mul", vocab_size=300, eos_token_id=0)
    save_folder(mhe_edge.build_model(config, seed=1), folder / "model")
    byte_tokenizer().save(folder / "model")
    return folder / "model"


def last_json(run: subprocess.CompletedProcess) -> dict:
    if run.returncode != 0 or not run.stdout.strip():
        return {"error": (run.stderr.strip().splitlines() or ["failed"])[-1][:200]}
    return json.loads(run.stdout.strip().splitlines()[-1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--install", action="store_true")
    parser.add_argument(
        "--model", type=Path, help="a trained model folder (default: random weights)"
    )
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--out", type=Path, default=HERE / "results" / "clients.json")
    parser.add_argument("--node-dir", type=Path, default=NODE_DIR, help="npm folder of the clients")
    parser.add_argument("--optimum-python", type=Path, default=OPTIMUM / "bin" / "python")
    args = parser.parse_args()
    node_dir = args.node_dir
    if args.install:
        install()
        return 0
    import mhe_edge
    from mhe_edge.runtime import ExportedModel
    from mhe_edge.text.tokenizer import load_tokenizer

    n = args.new_tokens
    rows = []
    with tempfile.TemporaryDirectory(prefix="mhe-edge-clients-") as scratch:
        work = Path(scratch)
        folder = build_model(work, args.model)
        tokenizer = load_tokenizer(folder)
        onnx = work / "model.onnx"
        mhe_edge.export(folder, onnx)
        prompt = tokenizer.encode(TEXT)
        prompts = [prompt, tokenizer.encode("def main():")]
        runner = ExportedModel(onnx)
        started = time.perf_counter()
        want = [runner.generate(np.array([p]), n)[0].tolist() for p in prompts]
        ms = 1000 * (time.perf_counter() - started) / (2 * n)
        batch = runner.generate_rows(
            prompts, n, stop_at_eos=False
        )  # one batch, padded on the right
        rows.append(
            dict(
                client="mhe-edge generate",
                package="model.onnx",
                alone=None,
                batch=batch == want,
                ms=ms,
            )
        )

        def row(client, package, result, batched=True):
            if "error" in result:
                rows.append(dict(client=client, package=package, error=result["error"]))
                return
            rows.append(
                dict(
                    client=client,
                    package=package,
                    alone=result["alone"] == want[: len(result["alone"])],
                    batch=(result.get("batch") == want) if batched else None,
                    ms=result["ms_per_token"],
                )
            )

        # transformers, on the folded checkpoint
        try:
            import torch
            from transformers import AutoModelForCausalLM

            mhe_edge.fold(folder, work / "folded")
            hf = AutoModelForCausalLM.from_pretrained(work / "folded").eval()
            alone, started = [], time.perf_counter()
            for p in prompts:
                ids = torch.tensor([p])
                out = hf.generate(
                    ids, max_new_tokens=n, min_new_tokens=n, do_sample=False, pad_token_id=0
                )
                alone.append(out[0, len(p) :].tolist())
            ms = 1000 * (time.perf_counter() - started) / (2 * n)
            width = max(map(len, prompts))
            ids = torch.tensor([[0] * (width - len(p)) + p for p in prompts])
            mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
            batch = hf.generate(
                ids,
                attention_mask=mask,
                max_new_tokens=n,
                min_new_tokens=n,
                do_sample=False,
                pad_token_id=0,
            )[:, width:].tolist()
            row("transformers", "mhe-edge fold", dict(alone=alone, batch=batch, ms_per_token=ms))
        except Exception as exc:  # a client that fails is a row, not a crash
            row("transformers", "mhe-edge fold", {"error": str(exc)[:200]})

        # onnxruntime-genai (one prompt per generator: its batches pad on the right)
        try:
            from mhe_edge.edge.genai import genai_greedy

            mhe_edge.package(onnx, work / "genai", format="genai")
            started = time.perf_counter()
            got = [genai_greedy(work / "genai", p, n) for p in prompts]
            ms = 1000 * (time.perf_counter() - started) / (2 * n)
            cut = [w[: len(g)] for w, g in zip(want, got)]  # genai stops at EOS, without it
            rows.append(
                dict(
                    client="onnxruntime-genai", package="genai", alone=got == cut, batch=None, ms=ms
                )
            )
        except Exception as exc:
            row("onnxruntime-genai", "genai", {"error": str(exc)[:200]}, batched=False)

        node_ready = (
            shutil.which("node") and (node_dir / "node_modules/@huggingface/transformers").is_dir()
        )
        for target in ("ort", "std"):
            package = work / f"js-{target}"
            mhe_edge.package(onnx, package, format="transformers-js", target=target)
            label = f"transformers-js ({target})"
            if not node_ready:
                row("transformers.js (Node)", label, {"error": "not installed (--install)"})
                continue
            shutil.copyfile(HERE / "clients_runner.mjs", node_dir / "clients_runner.mjs")
            run = subprocess.run(
                ["node", str(node_dir / "clients_runner.mjs"), str(package), "fp32", str(n),
                 json.dumps(prompts)],
                capture_output=True, text=True, timeout=600,
            )  # fmt: skip
            row("transformers.js (Node)", label, last_json(run))

        optimum_python = args.optimum_python
        package = work / "optimum"
        mhe_edge.package(onnx, package, format="optimum", target="ort")
        if optimum_python.exists():
            run = subprocess.run(
                [str(optimum_python), str(HERE / "clients_optimum.py"), str(package), "model.onnx",
                 str(n), json.dumps(prompts)],
                capture_output=True, text=True, timeout=600,
            )  # fmt: skip
            row("Optimum (ORTModelForCausalLM)", "optimum (ort)", last_json(run))
        else:
            row(
                "Optimum (ORTModelForCausalLM)",
                "optimum (ort)",
                {"error": "not installed (--install)"},
            )

        if node_ready and Path(CHROMIUM).is_file():
            run = subprocess.run(
                [sys.executable, str(ROOT / "examples/web/check.py"), str(work / "js-ort"),
                 "--node-dir", str(node_dir), "--text", TEXT, "--new-tokens", str(n)],
                capture_output=True, text=True, timeout=600,
            )  # fmt: skip
            page = last_json(run)
            if "error" in page:
                row("Chromium (examples/web, wasm)", "transformers-js (ort)", page, batched=False)
            else:  # the page stops at EOS, as a user's page would
                tokens = page["tokens"]
                equal = tokens == want[0][: len(tokens)] and (len(tokens) == n or tokens[-1] == 0)
                rows.append(dict(client="Chromium (examples/web, wasm)", package="transformers-js (ort)",
                                 alone=equal, batch=None, ms=page["ms_per_token"]))  # fmt: skip
        else:
            row(
                "Chromium (examples/web, wasm)", "transformers-js (ort)", {"error": "not installed"}
            )

    def mark(value):
        return "-" if value is None else ("yes" if value else "NO")

    print(
        f"{n} new tokens, greedy; 'batch': two prompts as one batch, padded as the client pads"
        " (mhe-edge: right; the Hugging Face clients: left); '-': not run batched\n"
    )
    print("| client | package | token-equal alone | batch equals alone | ms/token |")
    print("| --- | --- | --- | --- | ---: |")
    for r in rows:
        if "error" in r:
            print(f"| {r['client']} | {r['package']} | {r['error']} | | |")
        else:
            alone = "reference" if r["alone"] is None else mark(r["alone"])
            print(
                f"| {r['client']} | {r['package']} | {alone} | {mark(r['batch'])} | {r['ms']:.2f} |"
            )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"new_tokens": n, "rows": rows}, indent=2) + "\n")
    return (
        0 if all(r.get("alone") is not False and r.get("batch") is not False for r in rows) else 1
    )


if __name__ == "__main__":
    sys.exit(main())
