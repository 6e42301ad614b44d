"""Lean loading: the header is read without the weights (the same ModelProto otherwise, and every
inline tensor found where it lies), reading it costs a small share of the weights' bytes, and `profile`
reports the peak of the session it measures (load included), which is the process's peak too."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys

import onnx
import pytest

from mhe_edge.config import ModelConfig
from mhe_edge.errors import ModelFileError
from mhe_edge.exporters import export
from mhe_edge.files import read_header
from mhe_edge.files.lean_proto import read_model_without_weights
from mhe_edge.models import build_model


@pytest.fixture(scope="module")
def weighty(tmp_path_factory):
    """A decoder whose file is mostly weights (~33 MB: a wide vocabulary, untied)."""
    config = ModelConfig(
        arch="decoder",
        attention="mhe-mul",
        n_layers=1,
        d_model=128,
        n_heads=4,
        d_ff=256,
        vocab_size=32_000,
        max_seq_len=64,
    )
    path = tmp_path_factory.mktemp("lean") / "m.onnx"
    export(build_model(config, seed=0), path)
    return path


def test_the_header_is_the_model_without_its_weights(weighty, tmp_path):
    lean, raw = read_model_without_weights(weighty)
    full = onnx.load(str(weighty))
    data = weighty.read_bytes()
    assert len(raw) == sum(1 for t in full.graph.initializer if t.raw_data) > 0
    for tensor in full.graph.initializer:
        if tensor.raw_data:
            where = raw[tensor.name]
            assert data[where.offset : where.offset + where.length] == tensor.raw_data
            tensor.ClearField("raw_data")
    assert lean == full  # everything else, field for field
    (tmp_path / "cut.onnx").write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelFileError, match="not a readable ONNX file"):
        read_header(tmp_path / "cut.onnx")


PEAK_SCRIPT = """
import json, sys
from pathlib import Path
def hwm():
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
import onnx, numpy, onnxruntime
from mhe_edge.files import read_header
Path("/proc/self/clear_refs").write_text("5")
before = hwm()
read_header(sys.argv[1])
figures = {"header": hwm() - before}
if sys.argv[2] == "load":
    from mhe_edge.runtime.driver import ExportedModel
    model = ExportedModel(sys.argv[1])
    figures["load"] = hwm()
else:
    import mhe_edge
    report = mhe_edge.profile(sys.argv[1], seq_len=8, new_tokens=4, runs=2, top_ops=4)
    figures["reported"] = report.peak_memory_bytes
    figures["process"] = hwm()
    figures["ops"] = len(report.top_ops)
print(json.dumps(figures))
"""


def _peaks(path, what):
    done = subprocess.run(
        [sys.executable, "-c", PEAK_SCRIPT, str(path), what],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_header_and_profile_peaks(weighty):
    loaded, profiled = _peaks(weighty, "load"), _peaks(weighty, "profile")
    weights = read_header(weighty).parameter_bytes
    assert loaded["header"] < 0.3 * weights, (
        loaded
    )  # onnx.load held the file twice: ~2x the weights
    # the reported peak covers loading the session (it measured the run phase only)
    assert profiled["reported"] >= 0.95 * loaded["load"], (loaded, profiled)
    # the op profile shares the measured session: the process never holds (or peaks at) a second one
    assert profiled["ops"] > 0 and profiled["process"] <= 1.05 * profiled["reported"], profiled


def test_a_model_is_built_straight_from_its_weights(tmp_path):
    """The parameters are the checkpoint's own tensors (no random model filled in), widened to float32
    when the file is half precision."""
    import torch

    from mhe_edge.models import read_checkpoint, save_checkpoint
    from mhe_edge.models.checkpoint import model_from_state

    config = ModelConfig(
        arch="decoder",
        attention="gqa",
        n_kv_heads=2,
        n_layers=1,
        d_model=32,
        n_heads=4,
        d_ff=64,
        vocab_size=50,
        max_seq_len=16,
    )
    save_checkpoint(build_model(config, seed=1), tmp_path / "m.safetensors")
    config, state = read_checkpoint(tmp_path / "m.safetensors")
    pointers = {name: t.data_ptr() for name, t in state.items()}
    model = model_from_state(config, state)
    assert {n: p.data_ptr() for n, p in model.state_dict().items()} == pointers
    half = {n: t.to(torch.bfloat16) for n, t in state.items()}
    widened = model_from_state(config, half)
    assert all(p.dtype == torch.float32 and not p.is_meta for p in widened.parameters())
    ids = torch.tensor([[1, 2, 3]])
    assert torch.allclose(widened(ids)[0], model(ids)[0], atol=0.1)


LOAD_SCRIPT = """
import json, sys
from pathlib import Path
def hwm():
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
import torch, mhe_edge
from mhe_edge.models import load_model
Path("/proc/self/clear_refs").write_text("5")
before = hwm()
m = load_model(sys.argv[1])
print(json.dumps({"load": hwm() - before, "weights": sum(p.numel() * 4 for p in m.parameters())}))
"""


def test_loading_holds_the_weights_about_once(tmp_path):
    from mhe_edge.models import save_checkpoint

    peaks = {}
    for name, vocab in (("small", 64), ("large", 32_000)):
        config = ModelConfig(
            arch="decoder",
            attention="mhe-mul",
            n_layers=1,
            d_model=256,
            n_heads=4,
            d_ff=512,
            vocab_size=vocab,
            max_seq_len=16,
        )
        save_checkpoint(build_model(config, seed=0), tmp_path / f"{name}.safetensors")
        done = subprocess.run(
            [sys.executable, "-c", LOAD_SCRIPT, str(tmp_path / f"{name}.safetensors")],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode == 0, done.stderr
        peaks[name] = json.loads(done.stdout.strip().splitlines()[-1])
    extra = (
        peaks["large"]["load"] - peaks["small"]["load"]
    )  # what the weights cost beyond torch's own
    weights = peaks["large"]["weights"] - peaks["small"]["weights"]
    assert extra < 1.7 * weights, peaks  # a random model filled in afterwards held them ~2.3 times


def test_inline_save_writes_what_onnx_ir_writes_holding_one_tensor_at_a_time(weighty, tmp_path):
    """The single-file writer assembles the same model as onnx_ir's own save, and the lean checker still
    refuses a graph whose shapes do not agree."""
    import numpy as np
    import onnx_ir as ir

    from mhe_edge.errors import ExportError
    from mhe_edge.files import check_full
    from mhe_edge.files.lean_save import save_inline

    model = ir.load(weighty)
    ir.external_data.load_to_model(model)
    save_inline(model, tmp_path / "lean.onnx")
    ir.save(model, tmp_path / "plain.onnx")
    lean, plain = onnx.load(str(tmp_path / "lean.onnx")), onnx.load(str(tmp_path / "plain.onnx"))
    as_arrays = {t.name: onnx.numpy_helper.to_array(t) for t in plain.graph.initializer}
    assert len(lean.graph.initializer) == len(as_arrays) > 0
    for tensor in lean.graph.initializer:
        assert np.array_equal(onnx.numpy_helper.to_array(tensor), as_arrays[tensor.name])
    for proto in (lean, plain):
        proto.graph.ClearField("initializer")
    assert lean == plain
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "lean.onnx",
        "plain.onnx",
    ]  # no staging left
    check_full(tmp_path / "lean.onnx")

    broken = onnx.load(str(tmp_path / "lean.onnx"))
    matmul = next(n for n in broken.graph.node if n.op_type == "MatMul")
    big = next(t for t in broken.graph.initializer if t.name in matmul.input)
    big.dims[0] += 1  # the weight no longer fits the MatMul
    big.raw_data += b"\0" * (4 * big.dims[1])
    onnx.save(broken, str(tmp_path / "broken.onnx"))
    with pytest.raises(ExportError, match="checker rejects"):
        check_full(tmp_path / "broken.onnx")


NO_ONNX_SCRIPT = """
import sys
from mhe_edge.runtime.driver import ExportedModel
model = ExportedModel(sys.argv[1])
assert "onnx" not in sys.modules, "running a session imported onnx"
from mhe_edge.files import read_header
proto = read_header(sys.argv[1]).proto
import onnx
assert type(proto) is onnx.ModelProto  # the generated classes alone are onnx's own
assert onnx.ModelProto.FromString(proto.SerializeToString()) == proto
print("ok")
"""


def test_running_a_file_reads_its_header_without_importing_onnx(weighty):
    """onnx's C++ checker and shape inference cost ~10 MiB a process; reading a header needs only its
    generated protobuf classes, which are the very classes onnx hands out once it is imported."""
    done = subprocess.run(
        [sys.executable, "-c", NO_ONNX_SCRIPT, str(weighty)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr


def test_large_blocks_go_back_to_the_os_unless_the_user_set_the_threshold():
    """glibc's mmap threshold is fixed for session-running commands, and a threshold the user set
    (MALLOC_MMAP_THRESHOLD_) is theirs to keep."""
    script = "from mhe_edge.runtime.memory import return_large_blocks_to_the_os as f; print(f())"
    env = {k: v for k, v in os.environ.items() if k != "MALLOC_MMAP_THRESHOLD_"}
    results = [
        subprocess.run(
            [sys.executable, "-c", script],
            capture_output=True,
            text=True,
            timeout=60,
            env=extra,
        ).stdout.strip()
        for extra in (env, {**env, "MALLOC_MMAP_THRESHOLD_": "65536"})
    ]
    glibc = platform.libc_ver()[0] == "glibc"
    assert results == [str(glibc), "False"]


def test_a_tensor_of_a_type_without_a_known_size_is_refused(weighty, tmp_path):
    proto = onnx.load(str(weighty))
    proto.graph.initializer[
        0
    ].data_type = onnx.TensorProto.UINT2  # 4 per byte: not a type mhe-edge writes
    onnx.save(proto, str(tmp_path / "m.onnx"))
    with pytest.raises(ModelFileError, match="data type 25, which mhe-edge does not read"):
        read_header(tmp_path / "m.onnx")
