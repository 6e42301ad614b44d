"""Edge artifacts: the .ort round trip and its operator config; the C++ example against `mhe-edge generate`."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from passes_helpers import exported

from mhe_edge.edge import read_required_operators, to_ort
from mhe_edge.passes import optimize

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "cpp"


@pytest.mark.parametrize("attention", ["mhe-add", "mhe-mul"])
def test_ort_round_trip_needs_only_standard_ops(tmp_path, attention):
    _, path = exported(tmp_path, attention=attention)
    optimized = optimize(path, tmp_path / "opt.onnx", target="std").output
    report = to_ort(optimized, tmp_path / "model.ort").to_dict()
    assert Path(report["ort"]).is_file() and Path(report["required_operators_config"]).is_file()
    assert report["max_abs_diff"] <= 1e-5 and all(r["passed"] for r in report["parity"])
    operators = read_required_operators(report["required_operators_config"])
    assert list(operators) == ["ai.onnx"] and "Attention" in operators["ai.onnx"]
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("model")) == [
        "model.ort",
        "model.required_operators.config",
    ]


def test_ort_of_an_unoptimized_export_inlines_the_function(tmp_path):
    _, path = exported(tmp_path, attention="mhe-mul")
    report = to_ort(path, tmp_path / "raw.ort").to_dict()
    ops = report["required_operators"]
    assert (
        list(ops) == ["ai.onnx"]
        and "Softmax" in ops["ai.onnx"]
        and "Attention" not in ops["ai.onnx"]
    )


def test_to_ort_refusals(tmp_path, cli):
    _, path = exported(tmp_path, attention="mhe-add")
    (tmp_path / "decoder-mhe-add.ort").write_bytes(b"keep")
    result = cli("to-ort", path)
    assert result.code == 2 and "--force" in result.stderr
    assert (tmp_path / "decoder-mhe-add.ort").read_bytes() == b"keep"
    assert cli("to-ort", path, "-o", tmp_path / "x.onnx").code == 2
    assert cli("to-ort", path, "-o", tmp_path / "y.ort", "--optimization-level", "max").code == 2
    (tmp_path / "plain.onnx").write_bytes(b"\x08\x07")  # a protobuf with no graph and no metadata
    result = cli("to-ort", tmp_path / "plain.onnx")
    assert result.code == 4 and "not an mhe-edge export" in result.stderr


@pytest.fixture(scope="module")
def cpp_generate():
    if not (shutil.which("cmake") and (shutil.which("c++") or shutil.which("g++"))):
        pytest.skip("no C++ compiler or cmake on this machine")
    subprocess.run(
        ["bash", str(EXAMPLE / "build.sh")],
        check=True,
        env={**os.environ, "PYTHON": sys.executable},
    )
    binary = EXAMPLE / "build" / "mhe_generate"
    assert binary.is_file()
    return binary


@pytest.mark.parametrize(
    "attention,variant",
    [
        ("mhe-add", "export"),
        ("mhe-mul", "std"),
        ("mhe-mul", "ort"),
        ("mha", "fp16"),
        ("gqa", "ort"),
    ],
)
def test_cpp_example_matches_python_token_for_token(
    tmp_path, cli, cpp_generate, attention, variant
):
    _, path = exported(tmp_path, attention=attention, d_model=64)
    if variant != "export":
        path = optimize(
            path,
            tmp_path / "opt.onnx",
            target="ort" if variant == "ort" else "std",
            fp16=variant == "fp16",
        ).output
    args = ["--prompt", "3,1,4,1,5", "--max-new-tokens", "12"]
    python = cli("generate", path, *args)
    cpp = subprocess.run([str(cpp_generate), str(path), *args], capture_output=True, text=True)
    assert cpp.returncode == 0, cpp.stderr
    assert cpp.stdout.strip() == python.stdout.strip() and python.stdout.startswith("tokens: ")
    assert len(cpp.stdout.split()) == 13


def test_cpp_example_refuses_bad_prompts(tmp_path, cpp_generate):
    _, path = exported(tmp_path, attention="mhe-add")
    for args, fragment in [
        (["--prompt", "3,x"], "comma-separated"),
        (["--prompt", "5000"], "outside the vocabulary"),
        (["--prompt", "1", "--max-new-tokens", "999"], "max_seq_len"),
        (["--prompt", " 3,+1"], "comma-separated"),
        (["--prompt", "99999999999999999999999"], "comma-separated"),
        (["--prompt", "1", "--max-new-tokens", "99999999999"], "--max-new-tokens must be"),
        (["--prompt", "1", "--max-new-tokens", "4x"], "--max-new-tokens must be an integer"),
    ]:
        done = subprocess.run([str(cpp_generate), str(path), *args], capture_output=True, text=True)
        assert done.returncode == 2 and fragment in done.stderr, (args, done.stderr)


@pytest.mark.parametrize(
    "lie,fragment",
    [
        ({"num_layers": 7}, "do not match the metadata"),
        ({"kv_heads": 3}, "does not match the metadata's layout"),
        ({"vocab_size": 1000}, "logits are not"),
        ({"head_dim": -5}, "must be in"),
        ({"max_seq_len": "9" * 30}, "must be an integer"),
    ],
)
def test_cpp_example_refuses_metadata_that_lies(tmp_path, cpp_generate, lie, fragment):
    import onnx

    _, path = exported(tmp_path, attention="mhe-add")
    proto = onnx.load(path)
    entry = next(p for p in proto.metadata_props if p.key == "mhe_edge.io")
    io = json.loads(entry.value)
    for key, value in lie.items():
        (io["kv_cache"] if key in io["kv_cache"] else io)[key] = value
    entry.value = json.dumps(io).replace(
        '"' + "9" * 30 + '"', "9" * 30
    )  # a bare huge number, as a crafted file would
    onnx.save(proto, tmp_path / "lying.onnx")
    done = subprocess.run(
        [
            str(cpp_generate),
            str(tmp_path / "lying.onnx"),
            "--prompt",
            "3,1",
            "--max-new-tokens",
            "2",
        ],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 4 and fragment in done.stderr, done.stderr
