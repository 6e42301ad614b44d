"""`eval`: how well models predict held-out text, in one table: a trained folder in PyTorch beside any ONNX
files made from it (fp32, fp16, int8; any target), scored on identical windows, so each step's cost shows."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mhe_edge.errors import RequestError
from mhe_edge.results import Result


@dataclass
class EvalRow(Result):
    model: str
    runtime: str  # "pytorch" or "onnxruntime"
    target: str | None  # the optimize target of an ONNX file (None: a plain export or PyTorch)
    precision: str  # fp32, fp16, int8
    tokens: int
    cross_entropy: float  # nats per token
    perplexity: float
    bits_per_byte: float
    bits_per_byte_change: float  # against the first row


@dataclass
class EvalReport(Result):
    text: str  # what was scored
    bytes: int
    window: int  # tokens of context per scoring window
    unigram_bits_per_byte: (
        float  # the text's own byte entropy: the best a model without context does
    )
    rows: list[EvalRow] = field(default_factory=list)


def evaluate(
    models: Sequence[str | os.PathLike],
    text: Sequence[str | os.PathLike] | None = None,
    *,
    window: int | None = None,
    batch: int = 8,
    provider: str = "cpu",
    threads: int | None = None,
    on_progress: Callable[[str, int, int], None] | None = None,
) -> EvalReport:
    """Score each model (a model folder with tokenizer.json, or an ONNX file that carries its tokenizer) on
    the `text` files, or by default on the held-out split of the training text the first model records.

    Example: `mhe_edge.evaluate(["my-model", "my-model.onnx"]).rows[1].bits_per_byte`
    """
    from mhe_edge.accounting import check_fits, inference_memory
    from mhe_edge.text.held_out import scored_text
    from mhe_edge.text.scoring import score, unigram_bits_per_byte

    if not models:
        raise RequestError("give at least one model to evaluate")
    loaded = [_load(Path(m), provider, threads) for m in models]
    found = scored_text(text, _training_record(loaded[0]))
    if found is None:
        raise RequestError(
            f"{Path(loaded[0]['name']).name} records no training text: give --text FILE"
        )
    body, described = found.body, found.description
    if not body.strip():
        raise RequestError("the text to score is empty")
    window = window or min(min(item["config"].max_seq_len for item in loaded), 256)
    too_long = [item["name"] for item in loaded if window > item["config"].max_seq_len]
    if too_long:
        raise RequestError(f"window {window} exceeds the max_seq_len of {too_long[0]}")
    n_bytes = len(body.encode("utf-8"))
    rows: list[EvalRow] = []
    for item in loaded:
        tokenizer = item["tokenizer"]
        progress = (
            (lambda done, total, name=item["name"]: on_progress(name, done, total))
            if on_progress
            else None
        )
        ids = tokenizer.ids_exactly(body, "the text to score")  # every byte counted is scored
        rows_per_call = min(batch, -(-len(ids) // window))
        parts = inference_memory(item["config"], rows_per_call, window + 1)
        del parts["weights"]  # loaded already
        check_fits(
            parts,
            f"scoring {Path(item['name']).name} ({rows_per_call} windows of {window} per call)",
        )
        result = score(
            item["logits"],
            ids,
            n_bytes,
            tokenizer.bos_token_id,
            window,
            batch,
            progress,
        )
        first = rows[0].bits_per_byte if rows else result.bits_per_byte
        rows.append(
            EvalRow(
                item["name"],
                item["runtime"],
                item["target"],
                item["precision"],
                result.tokens,
                result.cross_entropy,
                result.perplexity,
                result.bits_per_byte,
                result.bits_per_byte - first,
            )
        )
    return EvalReport(described, n_bytes, window, unigram_bits_per_byte(body), rows)


def _load(path: Path, provider: str, threads: int | None) -> dict[str, Any]:
    from mhe_edge.text.tokenizer import has_tokenizer, load_tokenizer, tokenizer_of_export

    if path.suffix == ".onnx":
        from mhe_edge.runtime.driver import ExportedModel
        from mhe_edge.text.quality import session_logits

        runner = ExportedModel(path, provider, threads)
        runner._require("decoder", "evaluation on text")
        tokenizer = tokenizer_of_export(runner.metadata, path.name)
        if tokenizer is None:
            raise RequestError(
                f"{path.name} carries no tokenizer: export it from a trained model folder"
            )
        header = runner.metadata
        return {
            "name": str(path),
            "runtime": "onnxruntime",
            "config": runner.config,
            "tokenizer": tokenizer,
            "logits": session_logits(runner.session, runner.config),
            "target": header.get("mhe_edge.target"),
            "precision": header.get("mhe_edge.precision", "fp32"),
            "metadata": header,
            "path": path,
        }
    if not path.is_dir():
        raise RequestError(f"{str(path)!r} is neither a model folder nor an .onnx file")
    if not has_tokenizer(path):
        raise RequestError(
            f"{path.name} has no tokenizer.json: evaluate trained folders (mhe-edge train)"
        )
    if provider != "cpu":
        raise RequestError(
            "PyTorch rows are scored on the CPU; use --provider cpu (ONNX files alone may use cuda)"
        )
    from mhe_edge.models import load_model
    from mhe_edge.training.workflow import torch_logits

    model = load_model(path)
    if model.config.arch != "decoder":
        raise RequestError(f"{path.name} is an encoder; evaluation on text is for decoders")
    return {
        "name": str(path),
        "runtime": "pytorch",
        "config": model.config,
        "tokenizer": load_tokenizer(path),
        "logits": torch_logits(model),
        "target": None,
        "precision": "fp32",
        "path": path,
    }


def _training_record(item: dict[str, Any]) -> dict[str, Any] | None:
    """The training-text record of a model folder (training.json) or an export (its metadata), checked."""
    from mhe_edge.text.corpus import read_training_record
    from mhe_edge.text.held_out import corpus_record_of_export

    if item["runtime"] == "pytorch":
        record = read_training_record(item["path"])
        return record["corpus"] if record is not None else None
    return corpus_record_of_export(item["metadata"], Path(item["name"]).name)
