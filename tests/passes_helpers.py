"""Shared by the pass tests: tiny exports with head embeddings moved well away from their init."""
from __future__ import annotations

from collections import Counter

import onnx_ir as ir
import torch

from conftest import tiny_model
from mhe_edge.exporters import export
from mhe_edge.runtime import create_session
from mhe_edge.verification import compare_runners, ort_runner


def exported(tmp_path, arch="decoder", attention="mhe-mul", seed=21, **overrides):
    model = tiny_model(arch=arch, attention=attention, seed=seed, **overrides)
    if model.config.is_mhe:
        with torch.no_grad():  # embeddings far from 0 / 1, so a fold that ignored them would fail parity
            for block in model.blocks:
                for e in block.attn.head_embeddings():
                    e.add_(0.5 * torch.randn_like(e))
    path = tmp_path / f"{arch}-{attention}.onnx"
    export(model, path)
    return model, path


def op_counts(model: ir.Model) -> Counter:
    return Counter(f"{n.domain}.{n.op_type}" if n.domain else n.op_type for n in model.graph)


def parity(config, candidate_path, reference_path, atol=1e-4):
    return compare_runners(config, ort_runner(create_session(candidate_path)), ort_runner(create_session(reference_path)), atol)
