"""Reliability: every bad input is refused with its exit code, a one-line message naming the problem, no
traceback, no code run, and no file left behind (distinct cases through the real CLI)."""
import os
import pickle
from pathlib import Path

import onnx
import pytest
import torch

from conftest import CodeCarrier, tiny_model
from mhe_edge import save_checkpoint
from mhe_edge.models.checkpoint import FORMAT
from mhe_edge.exporters import export

MARKER = "code_ran"


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    """Valid inputs to break: a checkpoint, a decoder export, an encoder export, one with external data."""
    folder = tmp_path_factory.mktemp("assets")
    model = tiny_model(attention="mhe-mul")
    save_checkpoint(model, folder / "good.pt")
    save_checkpoint(model, folder / "good.safetensors")
    export(model, folder / "good.onnx")
    export(tiny_model(arch="encoder", attention="mhe-add"), folder / "encoder.onnx")
    export(model, folder / "external.onnx", external_data=True)
    return folder, model


def _copy(assets, name, to):
    to.write_bytes((assets[0] / name).read_bytes())
    return to


def _external_data_at(assets, d, location, symlink_to=None):
    """A copy of the external-data export whose tensors name `location` (made a symlink when asked)."""
    (d / "sub").mkdir()
    proto = onnx.load(assets[0] / "external.onnx", load_external_data=False)
    for tensor in proto.graph.initializer:
        for entry in tensor.external_data:
            if entry.key == "location":
                entry.value = location
    onnx.save(proto, d / "sub" / "evil.onnx")
    if symlink_to:
        os.symlink(symlink_to, d / "sub" / location)
    return d / "sub" / "evil.onnx"


def _huge_tensor(assets, d):
    proto = onnx.load(assets[0] / "good.onnx")
    tensor = max(proto.graph.initializer, key=lambda t: len(t.raw_data))
    tensor.dims[:] = [100_000, 100_000]
    onnx.save(proto, d / "huge.onnx")
    return d / "huge.onnx"


def _plain_onnx(d):
    from onnx import TensorProto, helper

    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])])
    onnx.save(helper.make_model(graph), d / "plain.onnx")
    return d / "plain.onnx"


def _torch_file(d, name, obj):
    torch.save(obj, d / name)
    return d / name


def _payload(assets, **changes):
    model = assets[1]
    return {"format": FORMAT, "config": model.config.to_dict(), "state_dict": model.state_dict(), **changes}


# (id, setup(assets, tmp) -> argv, exit code, fragment of the message)
CASES = [
    ("text-checkpoint", lambda a, d: ["inspect", _write(d / "notes.pt", b"hello\n")], 3, "not an mhe-edge checkpoint"),
    ("empty-checkpoint", lambda a, d: ["inspect", _write(d / "empty.pt", b"")], 3, "is empty"),
    ("random-bytes-checkpoint", lambda a, d: ["inspect", _write(d / "noise.safetensors", os.urandom(3000))], 3, "not"),
    ("pickle-code-top-level", lambda a, d: ["inspect", _torch_file(d, "evil.pt", CodeCarrier(d / MARKER))], 3, "refuses"),
    ("pickle-code-nested", lambda a, d: ["export", _torch_file(d, "evil2.pt", _payload(a, extra={"x": [CodeCarrier(d / MARKER)]}))], 3, "refuses"),
    ("raw-pickle-with-code", lambda a, d: ["inspect", _write(d / "raw.pt", pickle.dumps(CodeCarrier(d / MARKER)))], 3, "not an mhe-edge checkpoint"),
    ("truncated-pt", lambda a, d: ["export", _write(d / "cut.pt", (a[0] / "good.pt").read_bytes()[:4000])], 3, "truncated"),
    ("truncated-safetensors", lambda a, d: ["inspect", _write(d / "cut.safetensors", (a[0] / "good.safetensors").read_bytes()[:4000])], 3, "not a readable safetensors"),
    ("other-programs-checkpoint", lambda a, d: ["inspect", _torch_file(d, "other.pt", {"model": a[1].state_dict()})], 3, "not an mhe-edge checkpoint"),
    ("state-dict-missing-key", lambda a, d: ["export", _torch_file(d, "miss.pt", _payload(a, state_dict={k: v for k, v in a[1].state_dict().items() if "out_proj" not in k}))], 3, "lacks"),
    ("state-dict-wrong-shape", lambda a, d: ["inspect", _torch_file(d, "shape.pt", _payload(a, state_dict={**a[1].state_dict(), "lm_head.weight": torch.zeros(3, 3)}))], 3, "has shape (3, 3)"),
    ("config-that-does-not-divide", lambda a, d: ["inspect", _torch_file(d, "cfg.pt", _payload(a, config={**a[1].config.to_dict(), "head_dim": None, "d_model": 50}))], 3, "not divisible"),
    ("onnx-random-bytes", lambda a, d: ["inspect", _write(d / "noise.onnx", os.urandom(2000))], 4, "not a readable ONNX file"),
    ("onnx-empty", lambda a, d: ["optimize", _write(d / "empty.onnx", b"")], 4, "not an mhe-edge export"),
    ("onnx-truncated", lambda a, d: ["generate", _write(d / "cut.onnx", (a[0] / "good.onnx").read_bytes()[:5000]), "--prompt", "1"], 4, "not"),
    ("onnx-not-mhe-edge", lambda a, d: ["profile", _plain_onnx(d)], 4, "not an mhe-edge export"),
    ("onnx-external-data-outside-folder", lambda a, d: ["to-ort", _external_data_at(a, d, "../../etc/passwd")], 4, "outside its folder"),
    ("onnx-external-data-symlink-outside", lambda a, d: ["inspect", _external_data_at(a, d, "weights.data", symlink_to="/etc/hostname")], 4, "outside its folder"),
    ("onnx-huge-declared-tensor", lambda a, d: ["inspect", _huge_tensor(a, d)], 4, "declares"),
    ("compare-non-mhe-edge-file", lambda a, d: ["compare", _plain_onnx(d), "--seq-lens", "4"], 4, "not an mhe-edge export"),
    ("package-an-encoder", lambda a, d: ["package", a[0] / "encoder.onnx", "-o", d / "pkg"], 2, "is an encoder"),
    ("unknown-provider", lambda a, d: ["generate", a[0] / "good.onnx", "--prompt", "1", "--provider", "npu"], 2, "unknown provider"),
    ("cuda-where-there-is-none", lambda a, d: ["profile", a[0] / "good.onnx", "--provider", "cuda"], 7, "CUDAExecutionProvider"),
    ("batch-zero", lambda a, d: ["profile", a[0] / "good.onnx", "--batch", "0"], 2, "Invalid value for '--batch'"),
    ("seq-len-negative", lambda a, d: ["profile", a[0] / "good.onnx", "--seq-len", "-5"], 2, "Invalid value for '--seq-len'"),
    ("new-tokens-negative", lambda a, d: ["profile", a[0] / "good.onnx", "--new-tokens", "-1"], 2, "Invalid value for '--new-tokens'"),
    ("token-outside-vocab", lambda a, d: ["generate", a[0] / "good.onnx", "--prompt", "1,97"], 2, "outside the vocabulary"),
    ("token-negative", lambda a, d: ["generate", a[0] / "good.onnx", "--prompt", "-4"], 2, "outside the vocabulary"),
    ("prompt-not-integers", lambda a, d: ["generate", a[0] / "good.onnx", "--prompt", "1.5,2"], 2, "comma-separated token ids"),
    ("generation-past-max-seq-len", lambda a, d: ["generate", a[0] / "good.onnx", "--prompt", "1,2", "--max-new-tokens", "63"], 2, "exceed the model's max_seq_len"),
    ("heads-do-not-divide-width", lambda a, d: ["init", d / "m.pt", "--d-model", "50", "--heads", "4"], 2, "not divisible by n_heads"),
    ("kv-heads-do-not-divide-heads", lambda a, d: ["init", d / "m.pt", "--attention", "gqa", "--heads", "4", "--kv-heads", "3"], 2, "not divisible by n_kv_heads"),
    ("output-in-missing-folder", lambda a, d: ["export", a[0] / "good.pt", "-o", d / "nope" / "m.onnx"], 2, "does not exist"),
    ("output-over-existing-file", lambda a, d: ["init", _write(d / "keep.pt", b"precious")], 2, "pass --force"),
    ("export-over-existing-file", lambda a, d: ["export", a[0] / "good.pt", "-o", _write(d / "keep.onnx", b"precious")], 2, "pass --force"),
    ("opset-too-low", lambda a, d: ["export", a[0] / "good.pt", "-o", d / "m.onnx", "--opset", "12"], 2, "opset 12 is not supported"),
    ("fp16-and-int8", lambda a, d: ["optimize", a[0] / "good.onnx", "-o", d / "o.onnx", "--fp16", "--int8"], 2, "not both"),
    ("inspect-unknown-suffix", lambda a, d: ["inspect", _write(d / "model.bin", b"x")], 2, "inspect takes"),
]


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


@pytest.mark.parametrize("name,setup,code,fragment", CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_refused_cleanly(tmp_path, cli, assets, name, setup, code, fragment):
    argv = setup(assets, tmp_path)
    before = {p: p.read_bytes() if p.is_file() else None for p in tmp_path.rglob("*")}
    result = cli(*argv)
    assert result.code == code, (name, result)
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and fragment in errors[0], (name, result.stderr)
    assert "Traceback" not in result.stderr + result.stdout
    assert not (tmp_path / MARKER).exists(), f"{name}: a pickle's code ran"
    after = {p: p.read_bytes() if p.is_file() else None for p in tmp_path.rglob("*")}
    assert after == before, f"{name}: files were written or changed: {set(after) ^ set(before)}"


def test_debug_shows_the_traceback_with_its_root_cause(tmp_path):
    """--debug shows the whole chain: the one-line error and the library error that caused it."""
    import subprocess
    import sys

    path = _write(tmp_path / "cut.pt", b"PK\x03\x04" + b"\x00" * 40)  # a torch zip header, then nothing
    plain = subprocess.run([sys.executable, "-m", "mhe_edge", "inspect", str(path)], capture_output=True, text=True)
    assert plain.returncode == 3 and "Traceback" not in plain.stderr and plain.stderr.startswith("error:")
    debug = subprocess.run([sys.executable, "-m", "mhe_edge", "--debug", "inspect", str(path)], capture_output=True, text=True)
    assert debug.returncode != 0 and "Traceback" in debug.stderr
    assert "CheckpointError" in debug.stderr and "direct cause" in debug.stderr  # the root cause is not hidden
