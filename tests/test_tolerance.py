"""Parity judged against the output's own scale: an honest fp32 model with large logits (a tied
vocabulary of 4096 with big embeddings, logits in the hundreds) exports and optimizes at the default
tolerance although its fp32 rounding passes any fixed atol of 1e-4, while a fold that is 1% off in one
head of one layer is still refused at the same defaults."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mhe_edge.config import ModelConfig
from mhe_edge.errors import ParityError
from mhe_edge.exporters import export
from mhe_edge.models import build_model
from mhe_edge.passes import optimize
from mhe_edge.passes.fold_head_embeddings import FoldHeadEmbeddingsPass
from mhe_edge.verification import DEFAULT_ATOL, DEFAULT_RTOL, compare_output, raise_on_failures


def large_logit_model():
    config = ModelConfig(
        arch="decoder",
        attention="mhe-mul",
        n_layers=2,
        d_model=64,
        n_heads=4,
        d_ff=256,
        vocab_size=4096,
        max_seq_len=64,
        position="rope",
        norm="rmsnorm",
        mlp="swiglu",
        qkv_bias=False,
        out_bias=False,
        mlp_bias=False,
        tie_embeddings=True,
    )
    model = build_model(config, seed=0)
    with torch.no_grad():
        model.tok_emb.weight.mul_(8.0)  # tied: logits of several hundred, as wide vocabularies give
        for (
            block
        ) in model.blocks:  # head embeddings far from their init, so the fold has work to do
            for e in block.attn.head_embeddings():
                e.add_(0.5 * torch.randn_like(e))
    return model


@pytest.fixture(scope="module")
def large_export(tmp_path_factory):
    folder = tmp_path_factory.mktemp("large-logits")
    model = large_logit_model()
    report = export(model, folder / "m.onnx")
    return model, report


def test_record_tolerance_is_relative_to_the_reference_scale():
    want = np.array([500.0, -800.0, 1.0], dtype=np.float32)
    got = want + np.float32(2e-3)
    record = compare_output("c", "logits", got, want, atol=1e-4, rtol=1e-5)
    assert record.scale == 800.0 and record.allowed == pytest.approx(1e-4 + 8e-3)
    assert record.passed
    assert not compare_output("c", "logits", got, want, atol=1e-4, rtol=0.0).passed
    assert not compare_output("c", "logits", want + 1e-2, want, atol=1e-4, rtol=1e-5).passed
    with pytest.raises(ParityError, match="allowed"):
        raise_on_failures([compare_output("c", "x", want + 1.0, want, 1e-4, rtol=1e-5)], "test")


def test_large_logit_export_passes_at_default_beyond_any_fixed_atol(large_export):
    _, report = large_export
    logits = [r for r in report.parity if r.output == "logits"]
    assert max(r.scale for r in logits) > 300  # the model is what it claims: large logits
    assert report.max_abs_diff > DEFAULT_ATOL  # fp32 rounding alone passes a fixed 1e-4 ...
    assert all(r.max_abs_diff <= 1e-6 * r.scale for r in logits)  # ... but is ~1e-7 of the scale
    assert all(r.passed and r.rtol == DEFAULT_RTOL for r in report.parity)


def test_large_logit_optimize_passes_and_a_broken_fold_is_caught(
    large_export, tmp_path, monkeypatch
):
    _, report = large_export
    honest = optimize(report.path, tmp_path / "ort.onnx", target="ort")
    assert all(r.passed for r in honest.parity) and honest.max_abs_diff > 0

    real_call = FoldHeadEmbeddingsPass.call

    def off_by_one_percent(self, model):  # the fold, with one head of one layer 1% off
        result = real_call(self, model)
        name = next(n for n in model.graph.initializers if n.endswith("query_head_constant"))
        value = model.graph.initializers[name]
        array = value.const_value.numpy().copy()
        array[0] *= 1.01
        import onnx_ir as ir

        value.const_value = ir.tensor(array, name=name)
        return result

    monkeypatch.setattr(FoldHeadEmbeddingsPass, "call", off_by_one_percent)
    with pytest.raises(ParityError, match="disagrees with its input"):
        optimize(report.path, tmp_path / "broken.onnx", target="ort")
    assert not (tmp_path / "broken.onnx").exists()


def test_large_logit_to_ort_is_judged_relative_to_the_logits_scale(large_export, tmp_path):
    from mhe_edge.edge import to_ort
    from mhe_edge.edge.ort_format import ORT_TOLERANCE

    _, report = large_export
    converted = to_ort(report.path, tmp_path / "m.ort", optimization_level="all")
    atol, rtol = ORT_TOLERANCE["float32"]
    logits = [r for r in converted.parity if r.output == "logits"]
    assert all(r.passed and r.atol == atol and r.rtol == rtol for r in converted.parity)
    assert (
        min(r.allowed for r in logits) > 10 * atol
    )  # the scale, not the fixed part, sets the bound
