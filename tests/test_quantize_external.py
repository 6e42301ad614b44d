"""int4, int8 and fp16 of an external-data export, run from another directory that holds a decoy file of
the same name (`m.onnx.data`, same size, other numbers): the weights come from the model's own folder,
so each result equals the same step on an inline export of the same model, and stays external."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import tiny_model

from mhe_edge.exporters import export
from mhe_edge.files import read_header
from mhe_edge.passes import optimize
from mhe_edge.runtime import create_session


def _logits(path, config):
    session = create_session(path)
    ids = np.random.default_rng(5).integers(0, config.vocab_size, (2, 6))
    feeds = {"input_ids": ids, "attention_mask": np.ones_like(ids)}
    for i in session.get_inputs():
        if i.name.startswith("past_key_values."):
            dtype = np.float16 if i.type == "tensor(float16)" else np.float32
            feeds[i.name] = np.zeros((2, config.kv_heads, 0, config.head_dim), dtype)
    return session.run(["logits"], feeds)[0].astype(np.float64)


@pytest.fixture(scope="module")
def two_exports(tmp_path_factory):
    root = tmp_path_factory.mktemp("external")
    model = tiny_model(attention="mhe-mul", d_model=64, d_ff=128, seed=3)
    (root / "inline").mkdir()
    (root / "external").mkdir()
    export(model, root / "inline" / "m.onnx")
    export(model, root / "external" / "m.onnx", external_data=True)
    return root, model.config


@pytest.mark.parametrize("step", ["int4", "int8", "fp16"])
def test_lossy_steps_read_the_models_own_external_data(two_exports, tmp_path, monkeypatch, step):
    root, config = two_exports
    data = root / "external" / "m.onnx.data"
    decoy = np.random.default_rng(0).standard_normal(data.stat().st_size // 4).astype(np.float32)
    (tmp_path / "m.onnx.data").write_bytes(decoy.tobytes())
    monkeypatch.chdir(tmp_path)

    out = tmp_path / "out" / f"{step}.onnx"
    out.parent.mkdir()
    optimize(root / "external" / "m.onnx", out, **{step: True})
    assert read_header(out).external_files == [f"{step}.onnx.data"]  # external, as its input was

    want = root / "inline" / f"{step}.onnx"
    if not want.exists():
        optimize(root / "inline" / "m.onnx", want, **{step: True})
    assert not read_header(want).external_files
    np.testing.assert_array_equal(_logits(out, config), _logits(want, config))
