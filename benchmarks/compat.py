"""Which runtime runs which target: a compatibility matrix, measured.

Builds MHE-MUL, MHE-ADD and MHA decoders (the `tiny` preset), exports every target (the unoptimized
export, std, ort, portable; fp32 and fp16) and runs each, through a prefill and cached greedy decode steps,
on ONNX Runtime 1.16, 1.17, 1.20, 1.23 and the installed release, OpenVINO, onnxruntime-node and
onnx.reference, each in its own environment (created under --envs on first use: Python virtual
environments from PyPI, an npm folder). Every output is checked against PyTorch: logits within 1e-4 for
fp32 (fp16 reported), and the greedy tokens. Prints the table and writes JSON.

    .venv/bin/python benchmarks/compat.py [--envs benchmarks/results/compat-envs] [--out benchmarks/results/compat.json]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
PYTHON_RUNTIMES = {  # name -> (pip requirements, backend of compat_runner.py)
    "ort-1.16": (["onnxruntime==1.16.3", "numpy<2"], "ort"),
    "ort-1.17": (["onnxruntime==1.17.3", "numpy<2"], "ort"),
    "ort-1.20": (["onnxruntime==1.20.1", "numpy<2"], "ort"),
    "ort-1.23": (["onnxruntime==1.23.2"], "ort"),
    "openvino": (["openvino==2026.4.1"], "openvino"),
}
NODE_PACKAGE = "onnxruntime-node@1.30.0"
KINDS = ("mhe-mul", "mhe-add", "mha")
VARIANTS = [
    ("export", None, False),
    ("std", "std", False),
    ("ort", "ort", False),
    ("portable", "portable", False),
    ("std", "std", True),
    ("ort", "ort", True),
    ("portable", "portable", True),
]
PROMPT, STEPS = [3, 1, 4, 1, 5, 9], 6


def ensure_envs(folder: Path, wanted: list[str]) -> dict[str, list[str]]:
    """name -> the command prefix that runs a runner in that environment (created if missing)."""
    commands = {}
    for name in wanted:
        if name == "node":
            node_dir = folder / "node"
            if not (node_dir / "node_modules" / "onnxruntime-node").is_dir():
                node_dir.mkdir(parents=True, exist_ok=True)
                subprocess.run(["npm", "init", "-y"], cwd=node_dir, check=True, capture_output=True)
                # its install script fetches GPU binaries from outside the npm registry; the CPU ones are bundled
                subprocess.run(
                    ["npm", "install", "--silent", "--ignore-scripts", NODE_PACKAGE],
                    cwd=node_dir,
                    check=True,
                )
            commands[name] = ["node", str(node_dir / "compat_runner.mjs")]
            (node_dir / "compat_runner.mjs").write_text((HERE / "compat_runner.mjs").read_text())
        elif name in ("installed", "reference"):
            backend = "ort" if name == "installed" else "reference"
            commands[name] = [sys.executable, str(HERE / "compat_runner.py"), backend]
        else:
            requirements, backend = PYTHON_RUNTIMES[name]
            env = folder / name
            if not (env / "bin" / "python").exists():
                subprocess.run([sys.executable, "-m", "venv", str(env)], check=True)
                subprocess.run(
                    [str(env / "bin" / "pip"), "install", "-q", *requirements], check=True
                )
            commands[name] = [str(env / "bin" / "python"), str(HERE / "compat_runner.py"), backend]
    return commands


def build_files(folder: Path) -> tuple[list[dict], dict]:
    import mhe_edge

    files, references = [], {}
    for kind in KINDS:
        model = mhe_edge.build_model(mhe_edge.preset_config("tiny", attention=kind), seed=0)
        if model.config.is_mhe:  # embeddings away from 1/0, so a runtime that mishandles them shows
            with torch.no_grad():
                for block in model.blocks:
                    for e in block.attn.head_embeddings():
                        e.add_(0.3 * torch.randn_like(e))
        exported = folder / f"{kind}.onnx"
        mhe_edge.export(model, exported)
        references[kind] = torch_reference(model)
        for label, target, fp16 in VARIANTS:
            path = (
                exported
                if target is None
                else folder / f"{kind}.{target}{'.fp16' if fp16 else ''}.onnx"
            )
            if target is not None:
                mhe_edge.optimize(exported, path, target=target, fp16=fp16)
            files.append(
                {
                    "kind": kind,
                    "target": label,
                    "precision": "fp16" if fp16 else "fp32",
                    "path": path,
                    "config": model.config,
                }
            )
    return files, references


def torch_reference(model) -> dict:
    ids, past, logits, tokens = torch.tensor([PROMPT]), None, [], []
    with torch.no_grad():
        for _ in range(STEPS + 1):
            out, past = model(ids, past)
            logits.append(out.numpy())
            tokens.append(int(out[0, -1].argmax()))
            ids = torch.tensor([[tokens[-1]]])
    return {"logits": logits, "tokens": tokens}


def run_one(command: list[str], file: dict, work: Path) -> dict:
    cfg = file["config"]
    case = {
        "prompt": [PROMPT],
        "steps": STEPS,
        "kv_heads": cfg.kv_heads,
        "head_dim": cfg.head_dim,
        "n_layers": cfg.n_layers,
        "float16": int(file["precision"] == "fp16"),
    }
    stem = work / f"{file['path'].stem}.{abs(hash(tuple(command))) % 10**8}"
    node = command[0] == "node"
    if node:
        case_path, out_path = stem.with_suffix(".case.json"), stem.with_suffix(".out.json")
        case_path.write_text(json.dumps({**case, "prompt": PROMPT}))
    else:
        case_path, out_path = stem.with_suffix(".case.npz"), stem.with_suffix(".out.npz")
        np.savez(case_path, **{k: np.array(v) for k, v in case.items()})
    args = (
        [*command[:2], str(file["path"]), str(case_path), str(out_path)]
        if node
        else [*command, str(file["path"]), str(case_path), str(out_path)]
    )
    done = subprocess.run(
        args,
        capture_output=True,
        text=True,
        timeout=600,
        cwd=Path(command[1]).parent if node else None,
    )
    if done.returncode != 0:
        lines = [line for line in (done.stderr or done.stdout).splitlines() if line.strip()]
        reason = next(
            (line for line in reversed(lines) if "rror" in line),
            lines[-1] if lines else f"exit {done.returncode}",
        )
        return {"ok": False, "error": reason.strip()[:200]}
    if node:
        raw = json.loads(out_path.read_text())
        return {
            "ok": True,
            "tokens": raw["tokens"],
            "logits": [np.array(x, np.float32) for x in raw["logits"]],
        }
    out = np.load(out_path)
    return {
        "ok": True,
        "tokens": out["tokens"].tolist(),
        "logits": [out[f"logits_{i}"] for i in range(STEPS + 1)],
    }


def verdict(result: dict, reference: dict, precision: str) -> dict:
    if not result["ok"]:
        return {"status": "fails", "detail": result["error"]}
    diff = max(
        float(np.abs(got.reshape(-1) - want.reshape(-1)).max())
        for got, want in zip(result["logits"], reference["logits"])
    )
    tokens_equal = result["tokens"] == reference["tokens"]
    within = diff <= (1e-4 if precision == "fp32" else 5e-2)
    return {
        "status": "ok" if within and tokens_equal else "differs",
        "max_abs_diff": diff,
        "tokens_equal": tokens_equal,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--envs", type=Path, default=HERE / "results" / "compat-envs")
    parser.add_argument("--out", type=Path, default=HERE / "results" / "compat.json")
    parser.add_argument(
        "--runtimes",
        default="ort-1.16,ort-1.17,ort-1.20,ort-1.23,installed,openvino,node,reference",
    )
    args = parser.parse_args()
    import onnxruntime

    runtimes = args.runtimes.split(",")
    commands = ensure_envs(args.envs, runtimes)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        files, references = build_files(Path(tmp))
        for file in files:
            row = {k: file[k] for k in ("kind", "target", "precision")}
            for runtime in runtimes:
                start = time.perf_counter()
                result = verdict(
                    run_one(commands[runtime], file, Path(tmp)),
                    references[file["kind"]],
                    file["precision"],
                )
                row[runtime] = {**result, "seconds": round(time.perf_counter() - start, 2)}
                print(
                    f"{file['kind']:8} {row['target']:9} {row['precision']} {runtime:10} {result['status']}"
                    f" {result.get('max_abs_diff', result.get('detail', ''))}",
                    flush=True,
                )
            rows.append(row)
    names = {"installed": f"ort-{onnxruntime.__version__}"}
    print_table(rows, runtimes, names)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps(
            {"runtimes": [names.get(r, r) for r in runtimes], "rows": rows}, indent=1, default=str
        )
    )
    print(f"wrote {args.out}")


def print_table(rows: list[dict], runtimes: list[str], names: dict) -> None:
    """One line per target and precision; a runtime's cell is ok only if every kind passed."""
    print("| target | precision | " + " | ".join(names.get(r, r) for r in runtimes) + " |")
    print("| --- | --- | " + " | ".join("---" for _ in runtimes) + " |")
    groups: dict[tuple, list[dict]] = {}
    for row in rows:
        groups.setdefault((row["target"], row["precision"]), []).append(row)
    for (target, precision), group in groups.items():
        cells = []
        for runtime in runtimes:
            statuses = [row[runtime]["status"] for row in group]
            if all(s == "ok" for s in statuses):
                worst = max(row[runtime]["max_abs_diff"] for row in group)
                cells.append(f"ok ({worst:.0e})")
            else:
                bad = next(row for row in group if row[runtime]["status"] != "ok")
                cells.append(f"{bad[runtime]['status']} ({bad['kind']})")
        print(f"| {target} | {precision} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
