"""Choosing the next token from logits: greedy, or sampled with temperature, top-k, top-p and a repetition
penalty, seeded. One picker serves the PyTorch reference generator and the ONNX runtime, so both choose
from identical rules; rows that reached EOS keep emitting EOS (their padding) until every row is done."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mhe_edge import options
from mhe_edge.options import check_all


@dataclass(frozen=True)
class SamplingOptions:
    # 0: greedy (argmax); otherwise logits are divided by it before sampling
    temperature: float = options.TEMPERATURE.default
    top_k: int = options.TOP_K.default  # sample among the k likeliest tokens only; 0: no limit
    # sample among the smallest set of tokens whose probability reaches p (nucleus)
    top_p: float = options.TOP_P.default
    # > 1 discourages tokens already in the prompt or output (CTRL's rule)
    repetition_penalty: float = options.REPETITION_PENALTY.default
    seed: int | None = None  # seeds the sampler: the same seed and prompt give the same text

    def __post_init__(self) -> None:
        check_all(
            (options.TEMPERATURE, self.temperature),
            (options.TOP_K, self.top_k),
            (options.TOP_P, self.top_p),
            (options.REPETITION_PENALTY, self.repetition_penalty),
            (options.SEED, self.seed),
        )

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


class TokenPicker:
    """Picks one token per row per step and tracks which rows have finished (emitted EOS)."""

    def __init__(
        self,
        options: SamplingOptions | None,
        eos_token_id: int | None,
        batch: int,
        history: list[list[int]] | None = None,
    ):
        self.options = options or SamplingOptions()
        self.eos = eos_token_id
        self.done = np.zeros(batch, dtype=bool)
        self.rng = np.random.default_rng(self.options.seed)
        self.history = (
            [list(row) for row in history] if history is not None else [[] for _ in range(batch)]
        )

    @property
    def finished(self) -> bool:
        return bool(self.done.all())

    def pick(self, logits: np.ndarray) -> np.ndarray:
        """logits (B, V), finite -> next ids (B,) int64."""
        scores = logits.astype(np.float64)
        if self.options.repetition_penalty != 1.0:
            for row, seen in enumerate(self.history):
                if seen:
                    ids = np.unique(np.asarray(seen))
                    values = scores[row, ids]
                    scores[row, ids] = np.where(
                        values > 0,
                        values / self.options.repetition_penalty,
                        values * self.options.repetition_penalty,
                    )
        if self.options.greedy:
            chosen = scores.argmax(-1)
        else:
            chosen = np.array([self._sample(row) for row in scores])
        if self.eos is not None:
            chosen = np.where(self.done, self.eos, chosen)
            self.done |= chosen == self.eos
        for row, token in enumerate(chosen):
            self.history[row].append(int(token))
        return chosen.astype(np.int64)

    def _sample(self, scores: np.ndarray) -> int:
        order = np.argsort(-scores, kind="stable")
        if self.options.top_k:
            order = order[: self.options.top_k]
        # gaps below the best (<= 0), then scaled: a tiny temperature sends them to -inf, never NaN
        # (inf - inf), and exp(0) = 1 keeps the best token, so the sum is at least 1
        with np.errstate(over="ignore"):
            kept = (scores[order] - scores[order[0]]) / self.options.temperature
        probs = np.exp(kept)
        probs /= probs.sum()
        if self.options.top_p < 1.0:
            keep = int(
                np.searchsorted(np.cumsum(probs), self.options.top_p) + 1
            )  # the top token always stays
            order, probs = order[:keep], probs[:keep] / probs[:keep].sum()
        return int(order[self.rng.choice(len(order), p=probs)])
