"""`train`: text -> tokenizer -> decoder -> a trained model folder (the Hugging Face layout plus the tokenizer),
with a JSON-lines log, a loss curve and a record of the corpus so `eval` can find the held-out text again.

Run folder, while training and after:
  .mhe-edge, training.json (corpus, tokenizer, options, results), tokenizer.json (+ its two config files),
  checkpoints/ (resumable), then config.json, model.safetensors, generation_config.json, train_log.jsonl, loss.png.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mhe_edge.config import ModelConfig, preset_config
from mhe_edge.errors import CheckpointError, RequestError
from mhe_edge.files import FOLDER_MARKER, check_output
from mhe_edge.results import Result
from mhe_edge.text.corpus import RECORD_FILE
from mhe_edge.training.loop import StepInfo, TrainOptions

LOG_FILE, PLOT_FILE = "train_log.jsonl", "loss.png"
SAMPLE_PROMPT = "The "


@dataclass
class TrainReport(Result):
    path: str
    config: dict[str, Any]
    corpus: dict[str, Any]
    tokenizer: dict[str, Any]
    steps: int
    seconds: float
    tokens_trained: int
    held_out: dict[
        str, Any
    ]  # bits_per_byte, cross_entropy, perplexity; unigram and bigram baselines
    sample: str  # greedy text from SAMPLE_PROMPT
    files: list[str] = field(default_factory=list)


def train(
    output: str | os.PathLike,
    text_files: Sequence[str | os.PathLike] | None = None,
    *,
    attention: str = "mhe-mul",
    preset: str = "tiny",
    tokenizer: str = "bpe",
    vocab_size: int | None = None,
    options: TrainOptions | None = None,
    resume: bool = False,
    force: bool = False,
    on_step: Callable[[StepInfo], None] | None = None,
    on_stage: Callable[[str], None] | None = None,
    init_from: str | os.PathLike | None = None,
    teacher: str | os.PathLike | None = None,
    **overrides: Any,
) -> TrainReport:
    """Train a decoder on text files (default: Python's documentation text) and write a model folder.

    `tokenizer`: "bpe" (byte-level BPE learned from the text, `vocab_size` tokens; default the preset's
    vocabulary), "bytes" (one token per byte), or the path of a `tokenizer.json`. `overrides` are config
    fields (as `init_model` takes). With `resume`, `output` is a run folder from an earlier `train`, continued
    from its newest checkpoint (a larger `options.steps` extends it).

    Uptraining: `init_from` starts from a model folder with a tokenizer (e.g. from `convert`) instead of
    random weights, taking its config and tokenizer; `teacher` (any model over the same vocabulary) adds a KL
    term on its logits (`options.distill_weight`); `options.freeze_steps` trains only the converted attention
    tensors first.

    Example: `mhe_edge.train("my-model", attention="mhe-mul", preset="tiny", options=TrainOptions(steps=300))`
    """

    from mhe_edge.models import build_model
    from mhe_edge.text.corpus import corpus_from_record, load_corpus
    from mhe_edge.text.tokenizer import byte_tokenizer, load_tokenizer, train_bpe
    from mhe_edge.training.checkpoints import load_training_state
    from mhe_edge.training.loop import make_optimizer, run_training

    stage = on_stage or (lambda name: None)
    options = options or TrainOptions()
    options.check()
    folder = Path(output)
    if resume:
        record = _read_record(folder)
        saved = dict(
            record["options"],
            steps=options.steps or record["options"]["steps"],
            minutes=options.minutes or record["options"]["minutes"],
        )
        options = TrainOptions(**saved)
        stage("text")
        corpus = corpus_from_record(
            record["corpus"]
        )  # refused if the files changed since the run started
        text_tokenizer = load_tokenizer(folder)
        config = ModelConfig.from_dict(record["config"])
        if teacher is None and record.get("teacher") is not None:
            teacher = folder / record["teacher"]
    else:
        if text_files is not None and not text_files:
            text_files = None
        target = check_output(
            folder, force=force, folder=True, inputs=[init_from] if init_from else []
        )
        if init_from is not None:
            from mhe_edge.training.uptraining import starting_point

            initial, text_tokenizer = starting_point(init_from, overrides)
            requested = initial.config
        else:
            requested = preset_config(
                preset, attention=attention, **overrides
            )  # a bad config is refused before any text is read
        stage("text")
        corpus = load_corpus(text_files)
        stage("tokenizer")
        if init_from is not None:
            pass  # the starting point's own tokenizer
        elif tokenizer == "bpe":
            text_tokenizer = train_bpe(corpus.documents, vocab_size or requested.vocab_size)
        elif tokenizer == "bytes":
            text_tokenizer = byte_tokenizer()
        else:
            text_tokenizer = load_tokenizer(tokenizer)
        config = (
            requested
            if init_from is not None
            else preset_config(
                preset,
                attention=attention,
                **{
                    **overrides,
                    "vocab_size": text_tokenizer.vocab_size,
                    "bos_token_id": text_tokenizer.bos_token_id,
                    "eos_token_id": text_tokenizer.eos_token_id,
                },
            )
        )
        _fresh_run_folder(target, force)
        text_tokenizer.save(folder)
        record = {
            "config": config.to_dict(),
            "corpus": corpus.record(),
            "options": _options_dict(options),
            "tokenizer": {
                "kind": "init-from"
                if init_from is not None
                else tokenizer
                if tokenizer in ("bpe", "bytes")
                else "file",
                "vocab_size": text_tokenizer.vocab_size,
            },
        }
        if init_from is not None:
            record["init_from"] = Path(init_from).name
        if teacher is not None:
            # read again on --resume; relative to the run folder (no absolute paths are recorded)
            record["teacher"] = os.path.relpath(Path(teacher).resolve(), folder.resolve())
        _write_json(folder / RECORD_FILE, record)

    stage("encode")
    eos = text_tokenizer.eos_token_id
    train_ids = np.fromiter(
        (i for doc in text_tokenizer.encode_batch(corpus.documents) for i in [*doc, eos]),
        dtype=np.int64,
    )
    held_ids = np.asarray(text_tokenizer.encode(corpus.held_out), dtype=np.int64)
    model = build_model(config, seed=options.seed)
    if init_from is not None and not resume:
        model.load_state_dict(initial.state_dict())
        del initial
    teacher_model = None
    if teacher is not None:
        from mhe_edge.training.uptraining import load_teacher

        teacher_model = load_teacher(teacher, model)
    if options.provider == "cuda":
        from mhe_edge.training.loop import device_for

        model.to(device_for("cuda"))
    optimizer = make_optimizer(model, options)
    resume_state = load_training_state(folder, model, optimizer) if resume else None
    stage("train")
    result = run_training(
        model,
        train_ids,
        held_ids,
        options,
        folder,
        resume_state,
        optimizer,
        on_step,
        teacher=teacher_model,
    )
    model.to("cpu")

    stage("evaluate")
    held_out = evaluate_held_out(model, text_tokenizer, corpus, train_ids, result["seq_len"])
    sample = sample_text(model, text_tokenizer, SAMPLE_PROMPT, 48)
    files = _publish_outputs(folder, model, result["log"])
    record.update(
        options=_options_dict(options),
        results={
            "steps": result["step"],
            "seconds": result["elapsed"],
            "held_out": held_out,
            "sample": sample,
        },
    )
    _write_json(folder / RECORD_FILE, record)
    tokens = result["step"] * options.batch * result["seq_len"]
    return TrainReport(
        str(folder),
        config.to_dict(),
        corpus.record(),
        record["tokenizer"],
        result["step"],
        result["elapsed"],
        tokens,
        held_out,
        sample,
        files,
    )


def evaluate_held_out(
    model, tokenizer, corpus, train_ids: np.ndarray, window: int
) -> dict[str, Any]:
    """The model's bits per byte on the held-out text, beside a unigram and a bigram model of the same text."""
    from mhe_edge.text.scoring import bigram_score, score, unigram_bits_per_byte

    ids = tokenizer.encode(corpus.held_out)
    n_bytes = len(corpus.held_out.encode("utf-8"))
    result = score(torch_logits(model), ids, n_bytes, tokenizer.bos_token_id, window).to_dict()
    result["unigram_bits_per_byte"] = unigram_bits_per_byte(corpus.held_out)
    result["bigram_bits_per_byte"] = bigram_score(
        train_ids.tolist(), ids, n_bytes, tokenizer.bos_token_id, tokenizer.vocab_size
    ).bits_per_byte
    return result


def torch_logits(model):
    import torch

    def run(ids: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return model(torch.as_tensor(ids)).logits.float().numpy()

    return run


def sample_text(model, tokenizer, prompt: str, new_tokens: int) -> str:
    import torch

    ids = torch.tensor([tokenizer.encode(prompt)])
    room = model.config.max_seq_len - ids.shape[1]
    new = model.generate(ids, min(new_tokens, max(room, 0)))
    return prompt + tokenizer.decode(new[0].tolist())


def _fresh_run_folder(target: Path, force: bool) -> None:
    if target.exists() and force:  # check_output allowed it: mhe-edge wrote it
        shutil.rmtree(target)
    target.mkdir()
    (target / FOLDER_MARKER).write_text("written by mhe-edge; `--force` may replace this folder\n")


def _read_record(folder: Path) -> dict[str, Any]:
    path = folder / RECORD_FILE
    if not path.is_file():
        raise RequestError(
            f"{str(folder)!r} is not a training run folder (no {RECORD_FILE}); drop --resume to start one"
        )
    if path.stat().st_size > 50_000_000:
        raise CheckpointError(f"{RECORD_FILE} is too large to be a training record")
    try:
        record = json.loads(path.read_text())
        for key in ("config", "corpus", "options"):
            record[key]
    except (ValueError, KeyError, TypeError) as exc:
        raise CheckpointError(f"{folder.name}/{RECORD_FILE} is damaged: {exc}") from exc
    return record


def _options_dict(options: TrainOptions) -> dict[str, Any]:
    from dataclasses import asdict

    return asdict(options)


def _write_json(path: Path, data: dict[str, Any]) -> None:
    staged = path.with_name(f".{path.name}.tmp")
    staged.write_text(json.dumps(data, indent=2) + "\n")
    os.replace(staged, path)


def _publish_outputs(folder: Path, model, log: list[dict[str, Any]]) -> list[str]:
    """The model files, the log and the plot, each staged and renamed into the run folder."""
    from mhe_edge.models.folder import write_model_files

    stage = Path(tempfile.mkdtemp(prefix=".outputs.", dir=folder))
    try:
        names = write_model_files(model, stage)
        (stage / LOG_FILE).write_text("".join(json.dumps(entry) + "\n" for entry in log))
        names.append(LOG_FILE)
        if log:
            plot_losses(log, stage / PLOT_FILE)
            names.append(PLOT_FILE)
        for name in names:
            os.replace(stage / name, folder / name)
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    return names


def plot_losses(log: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(7, 4))
    axis.plot([e["step"] for e in log], [e["loss"] for e in log], lw=0.8, label="training loss")
    validated = [e for e in log if "val_loss" in e]
    if validated:
        axis.plot(
            [e["step"] for e in validated],
            [e["val_loss"] for e in validated],
            "o-",
            label="held-out loss",
        )
    axis.set_xlabel("step")
    axis.set_ylabel("cross-entropy (nats per token)")
    axis.legend()
    axis.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
