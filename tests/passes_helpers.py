"""Shared by the tests: tiny exports with head embeddings moved well away from their init.

Each distinct export is made once per test session and copied into the asking test's folder, so a test
may write beside its model freely while the suite pays for every export only once."""

from __future__ import annotations

import atexit
import shutil
import tempfile
from collections import Counter
from pathlib import Path

import onnx_ir as ir
import torch
from conftest import tiny_model

from mhe_edge.exporters import export
from mhe_edge.runtime import create_session
from mhe_edge.verification import compare_runners, ort_runner

_CACHE_DIR = Path(tempfile.mkdtemp(prefix="mhe-edge-test-exports-"))
atexit.register(shutil.rmtree, _CACHE_DIR, True)
_EXPORTS: dict[tuple, tuple] = {}


def exported(tmp_path, arch="decoder", attention="mhe-mul", seed=21, **overrides):
    """(model, tmp_path/ARCH-ATTENTION.onnx): the model must be treated as read-only (it is shared)."""
    key = (arch, attention, seed, tuple(sorted(overrides.items())))
    if key not in _EXPORTS:
        model = tiny_model(arch=arch, attention=attention, seed=seed, **overrides)
        if model.config.is_mhe:
            with (
                torch.no_grad()
            ):  # embeddings far from 0 / 1, so a fold that ignored them would fail parity
                for block in model.blocks:
                    for e in block.attn.head_embeddings():
                        e.add_(0.5 * torch.randn_like(e))
        cached = _CACHE_DIR / f"{len(_EXPORTS)}" / f"{arch}-{attention}.onnx"
        cached.parent.mkdir()
        export(model, cached)
        _EXPORTS[key] = (model, cached)
    model, cached = _EXPORTS[key]
    path = tmp_path / cached.name
    shutil.copyfile(cached, path)
    return model, path


def op_counts(model: ir.Model) -> Counter:
    return Counter(f"{n.domain}.{n.op_type}" if n.domain else n.op_type for n in model.graph)


def parity(config, candidate_path, reference_path, atol=1e-4, batched_chunks=True):
    return compare_runners(
        config,
        ort_runner(create_session(candidate_path)),
        ort_runner(create_session(reference_path)),
        atol,
        batched_chunks=batched_chunks,
    )


def independent_logits_diff(config, session, reference) -> float:
    """Max |first output| difference on the test's own inputs (not the library's parity cases): a prefill
    of 6 tokens with an empty cache. `reference` is another session or a PyTorch model."""
    import numpy as np

    rng = np.random.default_rng(1234)
    ids = rng.integers(0, config.vocab_size, (2, 6))
    feeds = {"input_ids": ids}
    if config.arch == "encoder":
        feeds["attention_mask"] = np.ones_like(ids)
    else:
        wanted = {i.name: i.type for i in session.get_inputs()}
        if "attention_mask" in wanted:
            feeds["attention_mask"] = np.ones_like(ids)
        for name in wanted:
            if name.startswith("past_key_values."):
                dtype = np.float16 if wanted[name] == "tensor(float16)" else np.float32
                feeds[name] = np.zeros((2, config.kv_heads, 0, config.head_dim), dtype)
    got = session.run(None, feeds)[0].astype(np.float64)
    if hasattr(reference, "get_inputs"):
        names = {i.name for i in reference.get_inputs()}
        want = reference.run(None, {k: v for k, v in feeds.items() if k in names})[0]
    else:
        with torch.no_grad():
            want = (
                reference(torch.from_numpy(ids), torch.from_numpy(feeds["attention_mask"]))
                if config.arch == "encoder"
                else reference(torch.from_numpy(ids))[0]
            ).numpy()
    return float(np.abs(got - want.astype(np.float64)).max())
