"""`package --format transformers-js` and `--format optimum`: the layout, config and I/O those clients
read, each file checked as they drive it (left padding included); then the clients themselves, for real,
where they are installed (transformers.js from npm in its own folder, Optimum in its own venv:
`benchmarks/clients.py --install` puts them where these tests look; otherwise they skip)."""

import json
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import onnx
import pytest
from passes_helpers import exported

from mhe_edge.errors import RequestError
from mhe_edge.runtime import ExportedModel
from mhe_edge.workflows.fold import FoldRefused
from mhe_edge.workflows.package import package

ROOT = Path(__file__).resolve().parents[1]
CLIENTS = ROOT / "benchmarks" / "results" / "clients"
NODE_DIR = Path(os.environ.get("MHE_EDGE_CLIENTS_NODE", CLIENTS / "node"))
OPTIMUM_PYTHON = Path(
    os.environ.get("MHE_EDGE_OPTIMUM_PYTHON", CLIENTS / "optimum" / "bin" / "python")
)
PROMPTS = [[3, 1, 4, 1, 5, 9], [2, 6, 5]]
LLAMA_SHAPE = dict(
    position="rope", norm="rmsnorm", mlp="swiglu", d_model=64, qkv_bias=False, out_bias=False
)


def io(path):
    graph = onnx.load(path, load_external_data=False).graph
    return {
        v.name: [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim]
        for v in list(graph.input) + list(graph.output)
    }


def test_transformers_js_package_of_a_learned_mhe_model(tmp_path):
    _, path = exported(tmp_path, attention="mhe-mul", d_model=64)
    report = package(
        path, tmp_path / "js", format="transformers-js", target="ort", precisions="fp32,fp16,int4"
    )
    assert report.files == {
        "fp32": "onnx/model.onnx",
        "fp16": "onnx/model_fp16.onnx",
        "int4": "onnx/model_q4.onnx",
    }
    assert all(
        c["left_padded_batch"] == "equal to each prompt alone" for c in report.check.values()
    )
    config = json.loads((tmp_path / "js" / "config.json").read_text())
    assert config["model_type"] == "gpt_bigcode" and config["multi_query"] is True
    assert config["max_position_embeddings"] == 64
    names = io(tmp_path / "js" / "onnx" / "model.onnx")
    assert names["past_key_values.0.key_value"] == ["batch_size", "past_sequence_length", 32]
    assert names["input_ids"] == ["batch_size", "sequence_length"]
    assert "past_key_values.0.key" not in names and "present.1.key_value" in names


def test_optimum_package_of_a_rope_mhe_model_is_llama_with_one_kv_head(tmp_path):
    _, path = exported(tmp_path, attention="mhe-mul", **LLAMA_SHAPE)
    report = package(path, tmp_path / "opt", format="optimum", target="std")
    config = json.loads((tmp_path / "opt" / "config.json").read_text())
    assert report.files == {"fp32": "model.onnx"} and config["model_type"] == "llama"
    assert config["num_key_value_heads"] == 1 and config["num_attention_heads"] == 4
    assert io(tmp_path / "opt" / "model.onnx")["past_key_values.0.key"] == [
        "batch_size",
        1,
        "past_sequence_length",
        16,
    ]


def test_refusals(tmp_path, cli):
    # RoPE with LayerNorm and GELU: no family has that shape (the export the padding tests share)
    _, path = exported(tmp_path, attention="mhe-mul", d_model=64, position="rope")
    result = cli("package", path, "--format", "optimum", "-o", tmp_path / "out")
    assert result.code == FoldRefused.exit_code and "RoPE folds to Llama" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and not (tmp_path / "out").exists()
    with pytest.raises(RequestError, match="precisions are a comma-separated list"):
        package(path, tmp_path / "o", format="optimum", precisions="fp8")
    with pytest.raises(RequestError, match="--precisions is for"):
        package(path, tmp_path / "o", format="genai", precisions="fp16")


def _packages(tmp_path, fmt):
    model, path = exported(tmp_path, attention="mhe-mul", d_model=64)
    want = [ExportedModel(path).generate(np.array([p]), 8)[0].tolist() for p in PROMPTS]
    for target in ("std", "ort"):
        yield target, package(path, tmp_path / f"{fmt}-{target}", format=fmt, target=target), want


@pytest.mark.skipif(
    shutil.which("node") is None
    or not (NODE_DIR / "node_modules" / "@huggingface" / "transformers").is_dir(),
    reason="transformers.js is not installed (benchmarks/clients.py --install)",
)
def test_transformers_js_for_real(tmp_path):
    shutil.copyfile(ROOT / "benchmarks" / "clients_runner.mjs", NODE_DIR / "clients_runner.mjs")
    for target, report, want in _packages(tmp_path, "transformers-js"):
        run = subprocess.run(
            [
                "node",
                str(NODE_DIR / "clients_runner.mjs"),
                report.folder,
                "fp32",
                "8",
                json.dumps(PROMPTS),
            ],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert run.returncode == 0, run.stderr[-2000:]
        result = json.loads(run.stdout.strip().splitlines()[-1])
        assert result["alone"] == want and result["batch"] == want, target


def _has_optimum() -> bool:
    """Optimum's venv, whole (a venv whose pip is still installing has no optimum.onnxruntime yet)."""
    venv = OPTIMUM_PYTHON.parent.parent
    return OPTIMUM_PYTHON.is_file() and any(
        venv.glob("lib/python*/site-packages/optimum/onnxruntime")
    )


@pytest.mark.skipif(
    not _has_optimum(), reason="Optimum's venv is absent (benchmarks/clients.py --install)"
)
def test_optimum_for_real(tmp_path):
    for target, report, want in _packages(tmp_path, "optimum"):
        run = subprocess.run(
            [
                str(OPTIMUM_PYTHON),
                str(ROOT / "benchmarks" / "clients_optimum.py"),
                report.folder,
                "model.onnx",
                "8",
                json.dumps(PROMPTS),
            ],
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert run.returncode == 0, run.stderr[-2000:]
        result = json.loads(run.stdout.strip().splitlines()[-1])
        assert result["alone"] == want and result["batch"] == want, target


def test_genai_text_check_stops_at_bytes_that_are_not_utf8(tmp_path):
    pytest.importorskip("onnxruntime_genai")
    from conftest import tiny_model

    from mhe_edge.exporters import export
    from mhe_edge.models.folder import save_folder
    from mhe_edge.text.tokenizer import byte_tokenizer

    model = tiny_model(attention="mhe-mul", seed=1, d_model=64, vocab_size=300, eos_token_id=0)
    folder = save_folder(model, tmp_path / "model")
    byte_tokenizer().save(folder)  # random weights: the continuation is arbitrary bytes
    export(folder, tmp_path / "model.onnx")
    report = package(tmp_path / "model.onnx", tmp_path / "genai", format="genai")
    text = report.check["text"]
    assert text["status"] == "passed"
    assert (
        "\ufffd" in text["mhe_edge_text"] and "compared" in text
    )  # seed 1: bytes that are not UTF-8
