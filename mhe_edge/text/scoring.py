"""How well a model predicts text: cross-entropy per token, perplexity, and bits per byte.

Bits per byte (total cross-entropy in bits / UTF-8 bytes of the text) does not depend on the tokenizer, so
a byte-level model, a BPE model and the n-gram baselines below compare directly. Every model is scored on
identical windows: the text's ids with <|endoftext|> in front, cut into windows of `window` + 1 ids that
overlap by one, so each id is predicted exactly once from the ids before it in its window.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np

from mhe_edge.errors import RequestError

LogitsFn = Callable[
    [np.ndarray], np.ndarray
]  # ids (B, L) int64 -> logits (B, L, V), any float dtype


@dataclass
class TextScore:
    tokens: int  # ids predicted
    bytes: int  # UTF-8 bytes of the text
    nats: float  # summed cross-entropy

    @property
    def cross_entropy(self) -> float:
        return self.nats / self.tokens  # nats per token

    @property
    def perplexity(self) -> float:
        return math.exp(min(self.cross_entropy, 700.0))

    @property
    def bits_per_byte(self) -> float:
        return self.nats / math.log(2) / self.bytes

    def to_dict(self) -> dict:
        return {
            "tokens": self.tokens,
            "bytes": self.bytes,
            "cross_entropy": self.cross_entropy,
            "perplexity": self.perplexity,
            "bits_per_byte": self.bits_per_byte,
        }


def windows(ids: list[int] | np.ndarray, start_id: int, window: int) -> list[np.ndarray]:
    """[start_id] + ids as windows of up to window + 1 ids, consecutive windows sharing one id."""
    if window < 1:
        raise RequestError(f"the scoring window must be at least 1 token, not {window}")
    stream = np.concatenate(([start_id], np.asarray(ids, dtype=np.int64)))
    return [stream[i : i + window + 1] for i in range(0, len(stream) - 1, window)]


def _batches(parts: list[np.ndarray], batch: int) -> Iterator[np.ndarray]:
    """Windows of equal length stacked `batch` at a time (the last window, usually shorter, alone)."""
    for length in sorted({len(p) for p in parts}, reverse=True):
        same = [p for p in parts if len(p) == length]
        for i in range(0, len(same), batch):
            yield np.stack(same[i : i + batch])


def window_nats(logits: np.ndarray, targets: np.ndarray) -> float:
    """Summed cross-entropy of `targets` (B, L) under `logits` (B, L, V), in float64."""
    logits = logits.astype(np.float64)
    if not np.isfinite(logits).all():
        raise RequestError("the model produced NaN or infinite logits; it cannot be scored")
    top = logits.max(-1, keepdims=True)
    log_z = np.log(np.exp(logits - top).sum(-1)) + top[..., 0]  # (B, L)
    picked = np.take_along_axis(logits, targets[..., None], axis=-1)[..., 0]
    return float((log_z - picked).sum())


def score(
    logits_fn: LogitsFn,
    ids: list[int] | np.ndarray,
    n_bytes: int,
    start_id: int,
    window: int,
    batch: int = 8,
    on_batch: Callable[[int, int], None] | None = None,
) -> TextScore:
    """Score a model (any callable from ids to logits: PyTorch or ONNX Runtime) on `ids`, the"
    " tokens of a text of `n_bytes` bytes."""
    if len(ids) == 0:
        raise RequestError("the text is empty after tokenization; nothing to score")
    parts = windows(ids, start_id, window)
    nats, done = 0.0, 0
    for stacked in _batches(parts, batch):
        logits = logits_fn(stacked[:, :-1])
        nats += window_nats(logits, stacked[:, 1:])
        done += len(stacked)
        if on_batch:
            on_batch(done, len(parts))
    return TextScore(tokens=len(ids), bytes=n_bytes, nats=nats)


def unigram_bits_per_byte(text: str) -> float:
    """The entropy of the text's own byte frequencies: what a model that ignores all context at best achieves."""
    counts = np.bincount(np.frombuffer(text.encode("utf-8"), dtype=np.uint8), minlength=256).astype(
        np.float64
    )
    p = counts[counts > 0] / counts.sum()
    return float(-(p * np.log2(p)).sum())


def bigram_score(
    train_ids: list[int], ids: list[int] | np.ndarray, n_bytes: int, start_id: int, vocab_size: int
) -> TextScore:
    """A token bigram model fit on `train_ids` (Witten-Bell interpolation with an add-one unigram), scored on
    `ids` as the models are: the level a model reaches from the previous token alone."""
    train = np.asarray(train_ids, dtype=np.int64)
    unigram = (np.bincount(train, minlength=vocab_size) + 1.0) / (len(train) + vocab_size)
    pair_keys, pair_counts = np.unique(train[:-1] * vocab_size + train[1:], return_counts=True)
    context_counts = np.bincount(train[:-1], minlength=vocab_size).astype(np.float64)
    context_types = np.bincount(pair_keys // vocab_size, minlength=vocab_size).astype(np.float64)
    stream = np.concatenate(([start_id], np.asarray(ids, dtype=np.int64)))
    prev, nxt = stream[:-1], stream[1:]
    where = np.searchsorted(pair_keys, prev * vocab_size + nxt)
    where = np.minimum(where, len(pair_keys) - 1)
    seen = pair_keys[where] == prev * vocab_size + nxt
    pair = np.where(seen, pair_counts[where], 0).astype(np.float64)
    c, t = context_counts[prev], context_types[prev]
    with np.errstate(invalid="ignore", divide="ignore"):
        lam = np.where(c > 0, c / (c + t), 0.0)
        p = lam * np.where(c > 0, pair / np.maximum(c, 1), 0.0) + (1 - lam) * unigram[nxt]
    return TextScore(tokens=len(ids), bytes=n_bytes, nats=float(-np.log(p).sum()))
