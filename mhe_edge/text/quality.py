"""Quality on text, for ONNX files: the logits of a session over scoring windows, the held-out text an
export's metadata names, and the gate lossy steps (fp16, int8, int4) pass through: the change in bits per
byte on held-out text, measured on the model's own tokenizer, refused beyond a threshold."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from mhe_edge.contract import ATTENTION_MASK, INPUT_IDS, LOGITS, PAST_PREFIX
from mhe_edge.errors import ParityError, RequestError
from mhe_edge.text.scoring import LogitsFn, TextScore, score

# Largest bits-per-byte increase each lossy step may cost before optimize refuses it. Measured on a trained
# tiny decoder (README, "Quality"): fp16 changes held-out bits per byte by ~1e-5, int8 dynamic quantization
# by ~7e-5; the defaults leave room for larger models, and stop a broken conversion (a tenth of a bit or more).
DEFAULT_MAX_LOSS = {"fp16": 0.005, "int8": 0.02, "int4": 0.1}
# the gate scores at most this much text (the held-out split of the default corpus is ~22 KB)
MAX_SCORED_BYTES = 200_000


def session_logits(session, config) -> LogitsFn:
    """ids (B, L) -> logits (B, L, V) from a decoder session, each window started from an empty cache."""
    inputs = {i.name: i.type for i in session.get_inputs()}

    def run(ids: np.ndarray) -> np.ndarray:
        feeds: dict[str, np.ndarray] = {INPUT_IDS: ids.astype(np.int64)}
        if ATTENTION_MASK in inputs:
            feeds[ATTENTION_MASK] = np.ones_like(feeds[INPUT_IDS])
        for name, kind in inputs.items():
            if name.startswith(PAST_PREFIX):
                dtype = np.float16 if kind == "tensor(float16)" else np.float32
                feeds[name] = np.zeros((ids.shape[0], config.kv_heads, 0, config.head_dim), dtype)
        return session.run([LOGITS], feeds)[0]

    return run


def read_eval_text(files: Sequence[str | os.PathLike]) -> str:
    """The given text files, whole, for scoring."""
    from mhe_edge.text.corpus import read_text_files

    texts, _ = read_text_files(files)
    return "\n".join(texts)


def held_out_text(
    metadata: dict[str, str], eval_text: Sequence[str | os.PathLike] | None, name: str = "the model"
) -> tuple[str, str] | None:
    """(text, where it came from): the files given (a training file by its held-out tail alone, found by
    its sha256 in the export's training-text record), else the held-out split of the builtin text the
    export records; None when neither exists (a random-weight model: its quality cannot be judged)."""
    from mhe_edge.text.held_out import corpus_record_of_export, scored_text

    found = scored_text(eval_text, corpus_record_of_export(metadata, name), "with --eval-text")
    return None if found is None else (found.body, found.description)


def score_text(logits_fn: LogitsFn, tokenizer, text: str, window: int) -> TextScore:
    text = text[:MAX_SCORED_BYTES]
    return score(
        logits_fn,
        tokenizer.ids_exactly(text, "the text to judge by"),
        len(text.encode("utf-8")),
        tokenizer.bos_token_id,
        window,
    )


@dataclass
class QualityCheck:
    judged: bool
    reason: str = ""  # why it was not judged
    text: str = ""  # what was scored
    bits_per_byte_before: float | None = None
    bits_per_byte_after: float | None = None
    threshold: float | None = None
    allowed: bool = False  # --allow-quality-loss

    @property
    def change(self) -> float | None:
        if self.bits_per_byte_before is None or self.bits_per_byte_after is None:
            return None
        return self.bits_per_byte_after - self.bits_per_byte_before

    def to_dict(self) -> dict[str, Any]:
        return {
            "judged": self.judged,
            "reason": self.reason,
            "text": self.text,
            "bits_per_byte_before": self.bits_per_byte_before,
            "bits_per_byte_after": self.bits_per_byte_after,
            "bits_per_byte_change": self.change,
            "threshold": self.threshold,
            "allowed_beyond_threshold": self.allowed,
        }


@dataclass
class QualityGate:
    """What a lossy step is judged by: the tokenizer and held-out text (or why there are none) and the
    threshold. Each file is scored on its own (`score`), so the caller can free one session before it
    loads the next; `verdict` then compares the two."""

    step: str
    config: Any
    threshold: float
    tokenizer: Any = None
    text: tuple[str, str] | None = None  # (the text, what it is)
    why_not: str = ""  # why quality cannot be judged, when it cannot

    def score(self, session) -> float | None:
        """Bits per byte of `session` on the held-out text; None when there is none to judge by."""
        if self.text is None:
            return None
        window = min(self.config.max_seq_len, 256)
        logits = session_logits(session, self.config)
        return score_text(logits, self.tokenizer, self.text[0], window).bits_per_byte

    def verdict(self, base: float | None, lossy: float | None, allow_loss: bool) -> QualityCheck:
        """The check of `lossy` against `base`; ParityError beyond the threshold (unless `allow_loss`)."""
        if self.text is None or base is None or lossy is None:
            return QualityCheck(False, self.why_not, threshold=self.threshold)
        check = QualityCheck(True, "", self.text[1], base, lossy, self.threshold, allow_loss)
        if lossy - base > self.threshold and not allow_loss:  # check.change
            raise ParityError(
                f"{self.step} costs {check.change:+.4f} bits per byte on {self.text[1]} ({base:.4f} -> {lossy:.4f}),"
                f" beyond the threshold {self.threshold}; nothing was written (--allow-quality-loss writes it anyway)"
            )
        return check


def quality_gate(
    step: str, config, metadata: dict[str, str], *, eval_text=None, max_loss: float | None = None
) -> QualityGate:
    """The gate for `step` on a model with this metadata: its own tokenizer and held-out text (or the
    `eval_text` files), the threshold `max_loss` or the step's default."""
    from mhe_edge.text.tokenizer import tokenizer_of_export

    threshold = DEFAULT_MAX_LOSS[step] if max_loss is None else max_loss
    if threshold < 0:
        raise RequestError(f"the quality threshold must not be negative, not {threshold}")
    tokenizer = tokenizer_of_export(metadata, "the model")
    text = held_out_text(metadata, eval_text) if tokenizer is not None else None
    why = ""
    if tokenizer is None or text is None:
        reason = (
            "the model carries no tokenizer"
            if tokenizer is None
            else "no held-out text: give --eval-text"
        )
        why = f"{reason} (a random-weight model?): quality cannot be judged"
    return QualityGate(step, config, threshold, tokenizer, text, why)
