"""Everything `train` checks before it creates a file: the output, the options, the config, the text, the
tokenizer and the encoded ids, for a new run or a resumed one. A refusal here leaves nothing behind."""

from __future__ import annotations

import dataclasses
import hashlib
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mhe_edge.config import ModelConfig, preset_config
from mhe_edge.errors import CheckpointError, ConfigError, RequestError, first_line
from mhe_edge.files import FOLDER_MARKER, check_output
from mhe_edge.text.corpus import RECORD_FILE, Corpus, read_training_record
from mhe_edge.training.loop import TrainOptions, row_length
from mhe_edge.training.record import resumed_options, tokenizer_fingerprint

TOKENIZER_KINDS = ("bpe", "bytes")


@dataclass
class Plan:
    record: dict[str, Any]  # training.json as it will be written (results are added at the end)
    options: TrainOptions
    config: ModelConfig
    tokenizer: Any  # TextTokenizer
    corpus: Corpus
    resumed: bool
    train_ids: np.ndarray  # the training documents, each followed by <|endoftext|>
    held_ids: np.ndarray  # the held-out text


def checked_options(options: TrainOptions | Mapping[str, Any] | None) -> TrainOptions:
    """TrainOptions from what the caller gave, checked (RequestError, exit 2, as the CLI's bounds)."""
    if options is None:
        options = TrainOptions()
    elif not isinstance(options, TrainOptions):
        known = {f.name for f in dataclasses.fields(TrainOptions)}
        unknown = sorted(map(str, set(options) - known))
        if unknown:
            raise RequestError(f"unknown training option(s): {', '.join(unknown)}")
        options = TrainOptions(**options)
    options.check()
    return options


def new_plan(
    folder: Path,
    text_files,
    attention: str | None,
    preset: str | None,
    tokenizer: str | None,
    vocab_size: int | None,
    options,
    overrides: dict[str, Any],
    force: bool,
    stage: Callable[[str], None],
) -> Plan:
    from mhe_edge.text.corpus import load_corpus
    from mhe_edge.text.tokenizer import byte_tokenizer, load_tokenizer, train_bpe

    options = checked_options(options)
    attention, preset, tokenizer = attention or "mhe-mul", preset or "tiny", tokenizer or "bpe"
    text_files = list(text_files or [])
    inputs = text_files + ([] if tokenizer in TOKENIZER_KINDS else [tokenizer])
    check_output(folder, force=force, folder=True, inputs=inputs)
    requested = preset_config(preset, attention=attention, **overrides)  # refused before reading
    stage("text")
    corpus = load_corpus(text_files or None)
    stage("tokenizer")
    if tokenizer == "bpe":
        text_tokenizer = train_bpe(corpus.documents, vocab_size or requested.vocab_size)
    elif tokenizer == "bytes":
        text_tokenizer = byte_tokenizer()
    else:
        text_tokenizer = load_tokenizer(tokenizer)
    specials = {
        "vocab_size": text_tokenizer.vocab_size,
        "bos_token_id": text_tokenizer.bos_token_id,
        "eos_token_id": text_tokenizer.eos_token_id,
    }
    config = preset_config(preset, attention=attention, **{**overrides, **specials})
    record = {
        "config": config.to_dict(),
        "corpus": corpus.record(),
        "options": dataclasses.asdict(options),
        "model": {
            "preset": preset,
            "overrides": {k: v for k, v in overrides.items() if v is not None},
        },
        "tokenizer": {
            "kind": tokenizer if tokenizer in TOKENIZER_KINDS else "file",
            "vocab_size": text_tokenizer.vocab_size,
            "requested_vocab_size": (vocab_size or requested.vocab_size)
            if tokenizer == "bpe"
            else None,
            "sha256": tokenizer_fingerprint(text_tokenizer),
        },
    }
    return _encoded(record, options, config, text_tokenizer, corpus, resumed=False, stage=stage)


def resume_plan(
    folder: Path,
    text_files,
    attention: str | None,
    preset: str | None,
    tokenizer: str | None,
    vocab_size: int | None,
    options,
    overrides: dict[str, Any],
    stage: Callable[[str], None],
) -> Plan:
    from mhe_edge.text.corpus import corpus_from_record, load_corpus
    from mhe_edge.text.tokenizer import load_tokenizer

    if folder.is_symlink():
        raise RequestError(f"{str(folder)!r} is a symbolic link; mhe-edge never writes through one")
    record = read_training_record(folder) if folder.is_dir() else None
    if record is None:
        raise RequestError(
            f"{str(folder)!r} is not a training run folder (no {RECORD_FILE}); drop --resume to start one"
        )
    if not (folder / FOLDER_MARKER).is_file():
        raise RequestError(
            f"{str(folder)!r} was not written by mhe-edge (no {FOLDER_MARKER} inside)"
        )
    run_tokenizer = load_tokenizer(folder)
    requested: dict[str, Any] = {}
    if isinstance(options, TrainOptions):
        requested.update(dataclasses.asdict(checked_options(options)))
    elif options is not None:
        checked_options(options)  # its values are in bounds, whatever the record says
        requested.update(options)
    named = {
        "attention": attention,
        "preset": preset,
        "tokenizer": tokenizer,
        "vocab_size": vocab_size,
    }
    requested.update({k: v for k, v in {**named, **overrides}.items() if v is not None})
    if text_files:
        requested["text"] = [_sha256(Path(p)) for p in text_files]
    where = f"{folder.name}/{RECORD_FILE}"
    resumed = resumed_options(record, where, requested, run_tokenizer, processes())
    try:
        config = ModelConfig.from_dict(record["config"])
    except (ConfigError, TypeError, ValueError) as exc:
        raise CheckpointError(f"{where}: config: {first_line(exc)}") from exc
    stage("text")
    corpus = load_corpus(text_files) if text_files else corpus_from_record(record["corpus"])
    return _encoded(record, resumed, config, run_tokenizer, corpus, resumed=True, stage=stage)


def _encoded(record, options, config, tokenizer, corpus, *, resumed: bool, stage) -> Plan:
    stage("encode")
    eos = tokenizer.eos_token_id
    train_ids = np.fromiter(
        (i for doc in tokenizer.encode_batch(corpus.documents) for i in [*doc, eos]),
        dtype=np.int64,
    )
    held_ids = np.asarray(tokenizer.encode(corpus.held_out), dtype=np.int64)
    if (
        tokenizer.vocab_size > config.vocab_size
        or int(train_ids.max(initial=0)) >= config.vocab_size
    ):
        raise CheckpointError(
            f"the tokenizer has {tokenizer.vocab_size:,} tokens, more than the model's vocabulary"
            f" ({config.vocab_size:,})"
        )
    row_length(options, config, len(train_ids))  # refused now, not after the run folder is made
    return Plan(record, options, config, tokenizer, corpus, resumed, train_ids, held_ids)


def processes() -> int:
    """How many processes train together: torchrun's WORLD_SIZE, else 1."""
    try:
        return max(1, int(os.environ.get("WORLD_SIZE", "1")))
    except ValueError:
        raise RequestError("WORLD_SIZE must be a whole number of processes") from None


def _sha256(path: Path) -> str:
    if not path.is_file():
        raise RequestError(f"text file {str(path)!r} does not exist or is not a file")
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
