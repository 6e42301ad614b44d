"""A decoder's cache that already holds a past: what a decode step at context T costs, without a T-token
prefill. The values do not change the work an attention step does, only its result, so `synthetic_past`
(seeded noise) times a step at past length T exactly as a real prompt of T tokens would; `cache_with_past`
takes any arrays, a real prefill's among them (tests check the two give the same logits)."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from mhe_edge.errors import RequestError
from mhe_edge.runtime.driver import ExportedModel, SessionCache


def cache_with_past(
    model: ExportedModel, past: Mapping[str, np.ndarray], capacity: int | None = None
) -> SessionCache:
    """A cache holding `past`: every past input name -> (batch, kv_heads, T, head_dim) of the model's float
    type (one array may serve every name). Where the file updates its cache in place and `capacity` is
    given, each name gets its own preallocated buffer of `capacity` positions with the first T filled;
    otherwise the arrays are the past the first step reads (and replaces)."""
    cfg = model.config
    missing = [name for name in model.past_names if name not in past]
    if missing:
        raise RequestError(
            f"the past lacks {missing[0]} (the model's cache inputs: {model.past_names})"
        )
    shapes = {tuple(np.shape(past[name])) for name in model.past_names}
    if len(shapes) != 1:
        raise RequestError(f"every layer's past must have the same shape, not {sorted(shapes)}")
    (shape,) = shapes
    if len(shape) != 4 or shape[1] != cfg.kv_heads or shape[3] != cfg.head_dim or shape[0] < 1:
        raise RequestError(
            f"a past must be (batch, {cfg.kv_heads} kv heads, length, {cfg.head_dim}), not {shape}"
        )
    batch, length = shape[0], shape[2]
    if length > cfg.max_seq_len:
        raise RequestError(
            f"a past of {length} positions exceeds the model's max_seq_len {cfg.max_seq_len}"
        )
    if capacity is not None and capacity < length:
        raise RequestError(f"cache capacity {capacity} is less than the past's {length} positions")
    if capacity is not None and model.cache_in_place:
        if capacity > cfg.max_seq_len:
            raise RequestError(
                f"cache capacity {capacity} exceeds the model's max_seq_len {cfg.max_seq_len}"
            )
        buffers = {}
        for name in model.past_names:  # one layer's buffer at a time: never the cache twice
            buffer = np.empty((batch, cfg.kv_heads, capacity, cfg.head_dim), model.float_dtype)
            buffer[:, :, :length] = past[name]
            buffers[name] = model._ortvalue(
                buffer
            )  # on the CPU the OrtValue is this array's memory
        return SessionCache(buffers, length, capacity)
    return SessionCache(
        {
            name: model._ortvalue(np.asarray(past[name], dtype=model.float_dtype))
            for name in model.past_names
        },
        length,
    )


def synthetic_past(model: ExportedModel, batch: int, length: int, seed: int = 0) -> np.ndarray:
    """One layer's past of `length` positions, seeded unit noise in the model's float type; `cache_with_past`
    gives each layer a copy of it (so the process holds the cache and one layer more, never two caches)."""
    cfg = model.config
    rng = np.random.default_rng(seed)
    return rng.standard_normal(
        (batch, cfg.kv_heads, length, cfg.head_dim), dtype=np.float32
    ).astype(model.float_dtype, copy=False)
