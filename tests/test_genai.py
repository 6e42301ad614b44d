"""`mhe-edge package --format genai`: onnxruntime-genai's greedy tokens equal `mhe-edge generate`'s."""

import json

import pytest
from passes_helpers import exported

from mhe_edge.edge import genai_greedy
from mhe_edge.errors import RequestError
from mhe_edge.workflows.package import package as package_genai

pytest.importorskip(
    "onnxruntime_genai", reason="onnxruntime-genai is not installed (pip install 'mhe-edge[genai]')"
)


@pytest.mark.parametrize(
    "attention,target,share",
    [
        ("mhe-add", "ort", False),
        ("mhe-mul", "ort", False),
        ("mhe-mul", "ort", True),
        ("mhe-add", "std", False),
        ("mha", "ort", False),
        ("mha", "ort", True),
    ],
)
def test_genai_tokens_equal_mhe_edge_generate(tmp_path, cli, attention, target, share):
    _, path = exported(tmp_path, attention=attention, d_model=64)
    folder = tmp_path / "pkg"
    report = package_genai(path, folder, target=target, share_buffer=share).to_dict()
    assert report["check"]["status"] == "passed"
    config = json.loads((folder / "genai_config.json").read_text())
    decoder = config["model"]["decoder"]
    assert decoder["num_key_value_heads"] == (1 if attention.startswith("mhe") else 4)
    assert (
        decoder["num_hidden_layers"] == 2
        and decoder["head_size"] == 16
        and decoder["hidden_size"] == 64
    )
    assert (
        config["search"]["past_present_share_buffer"] is share
        and config["model"]["context_length"] == 64
    )
    prompt = [5, 9, 2, 6, 5, 3]
    expected = cli(
        "generate", path, "--prompt", ",".join(map(str, prompt)), "--max-new-tokens", "20"
    ).stdout.split()[1:]
    expected = [int(t) for t in expected]
    eos = config["model"]["eos_token_id"]
    if eos in expected:
        expected = expected[: expected.index(eos)]
    assert genai_greedy(folder, prompt, 20) == expected


def test_package_cli_and_refusals(tmp_path, cli):
    _, path = exported(tmp_path, attention="mhe-mul", d_model=64)
    _, encoder = exported(tmp_path, arch="encoder", attention="mhe-mul")
    result = cli("package", path, "--format", "genai", "-o", tmp_path / "pkg", "--json")
    assert result.code == 0, result.stderr
    assert json.loads(result.stdout)["check"]["status"] == "passed"
    for args, fragment in [
        ([path, "-o", tmp_path / "pkg"], "exists; pass --force"),
        ([encoder, "-o", tmp_path / "enc"], "is an encoder"),
        ([path, "-o", tmp_path / "x", "--format", "tflite"], "format must be one of genai"),
        ([path, "-o", tmp_path / "y", "--share-buffer", "--target", "std"], "needs --target ort"),
        ([path, "-o", tmp_path / "z", "--eos-token-id", "5000"], "outside the vocabulary"),
        ([path, "-o", tmp_path / "missing" / "pkg"], "does not exist"),
    ]:
        result = cli("package", *args)
        assert (
            result.code == 2 and fragment in result.stderr and "Traceback" not in result.stderr
        ), (args, result.stderr)
    (tmp_path / "plain.onnx").write_bytes(b"\x08\x07")
    result = cli("package", tmp_path / "plain.onnx", "-o", tmp_path / "p")
    assert result.code == 4 and "not an mhe-edge export" in result.stderr
    assert sorted(p.name for p in tmp_path.iterdir() if not p.suffix) == ["pkg"]


def test_share_buffer_needs_gqa_model(tmp_path):
    from mhe_edge.passes import optimize

    _, path = exported(tmp_path, attention="mhe-mul", d_model=64)
    std = optimize(path, tmp_path / "std.onnx", target="std").output
    with pytest.raises(RequestError, match="GroupQueryAttention"):
        package_genai(std, tmp_path / "pkg", share_buffer=True)
    with pytest.raises(RequestError):
        package_genai(std, tmp_path / "pkg2", share_buffer=True, target="std")
