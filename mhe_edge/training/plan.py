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
from mhe_edge.options import DISTILL_WEIGHT
from mhe_edge.text.corpus import RECORD_FILE, Corpus, other_python, read_training_record
from mhe_edge.text.shards import ShardCorpus, Shards
from mhe_edge.training.loop import FSDP_NEEDS_PROCESSES, TrainOptions, row_length
from mhe_edge.training.record import flag_of, resumed_options, tokenizer_fingerprint
from mhe_edge.training.uptraining import model_fingerprint

TOKENIZER_KINDS = ("bpe", "bytes")


@dataclass
class Plan:
    record: dict[str, Any]  # training.json as it will be written (results are added at the end)
    options: TrainOptions
    config: ModelConfig
    tokenizer: Any  # TextTokenizer
    corpus: Corpus
    resumed: bool
    train_ids: Any  # the training documents, each followed by <|endoftext|> (array or TokenStream)
    held_ids: np.ndarray  # the held-out text
    initial: Any = None  # a new run's starting model (`--init-from`); None: seeded random weights
    teacher: Any = None  # the model distilled from (`--teacher`), frozen; None: no KL term


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
    init_from: str | os.PathLike | None = None,
    teacher: str | os.PathLike | None = None,
) -> Plan:
    from mhe_edge.text.corpus import load_corpus
    from mhe_edge.text.tokenizer import byte_tokenizer, load_tokenizer, train_bpe
    from mhe_edge.training.uptraining import starting_point

    options = _placed(checked_options(options))
    if teacher is None and options.distill_weight != DISTILL_WEIGHT.default:
        raise RequestError(
            "--distill-weight weighs the KL to a teacher: give --teacher, or drop it"
        )
    given_tokenizer = tokenizer is not None
    named = {"attention": attention, "preset": preset, "tokenizer": tokenizer}
    attention, preset, tokenizer = attention or "mhe-mul", preset or "tiny", tokenizer or "bpe"
    text_files = list(text_files or [])
    inputs = text_files + ([] if tokenizer in TOKENIZER_KINDS else [tokenizer])
    inputs += [p for p in (init_from, teacher) if p is not None]
    check_output(folder, force=force, folder=True, inputs=inputs)
    initial = None
    if init_from is not None:  # the folder's config and tokenizer: asking for others is refused
        given = {**named, "vocab_size": vocab_size, **overrides}
        initial, init_tokenizer = starting_point(
            Path(init_from), [flag_of(k) for k, v in given.items() if v is not None]
        )
        requested = initial.config
    else:
        # a bad config is refused before any text is read
        requested = preset_config(preset, attention=attention, **overrides)
    check_training_fits(requested, options)  # and one larger than memory, before anything is built
    if teacher is not None and not Path(teacher).exists():
        raise RequestError(f"--teacher {str(teacher)!r} does not exist")
    stage("text")
    shards = _shards_of(text_files)
    if shards is not None:  # shards come with their tokenizer
        if vocab_size is not None:
            raise RequestError("--vocab-size: token shards come with their tokenizer; drop it")
        if initial is not None:
            text_tokenizer = _shards_tokenizer(shards, None, init_tokenizer, "--init-from's")
        else:
            text_tokenizer = _shards_tokenizer(shards, tokenizer if given_tokenizer else None)
        tokenizer = "shards"
        corpus: Corpus = ShardCorpus.of(shards)
    else:
        corpus = load_corpus(text_files or None)
        stage("tokenizer")
        if initial is not None:
            text_tokenizer = init_tokenizer
        elif tokenizer == "bpe":
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
    if initial is not None:
        config, preset, tokenizer = initial.config, None, "init-from"
    else:
        config = preset_config(preset, attention=attention, **{**overrides, **specials})
    teacher_model = _teacher(teacher, config.vocab_size) if teacher is not None else None
    record = {
        "config": config.to_dict(),
        "corpus": corpus.record(),
        "options": dataclasses.asdict(options),
        "processes": processes(),  # training processes (torchrun's WORLD_SIZE): rows per step count them
        "model": {
            "preset": preset,
            "overrides": {k: v for k, v in overrides.items() if v is not None},
        },
        "tokenizer": {
            "kind": tokenizer if tokenizer in (*TOKENIZER_KINDS, "shards", "init-from") else "file",
            "vocab_size": text_tokenizer.vocab_size,
            "requested_vocab_size": (vocab_size or requested.vocab_size)
            if tokenizer == "bpe"
            else None,
            "sha256": tokenizer_fingerprint(text_tokenizer),
        },
    }
    if initial is not None:  # by name and fingerprint (no paths): --resume refuses another one
        record["init_from"] = Path(init_from or "").resolve().name
        record["init_from_sha256"] = model_fingerprint(initial)
    if teacher_model is not None:
        # read again by --resume: relative to the run folder as named (no absolute paths are recorded)
        record["teacher"] = os.path.relpath(Path(teacher or "").resolve(), folder.resolve())
        record["teacher_sha256"] = model_fingerprint(teacher_model)
    if shards is not None:
        plan = _streamed(record, options, config, shards, corpus, resumed=False)
    else:
        plan = _encoded(record, options, config, text_tokenizer, corpus, resumed=False, stage=stage)
    plan.initial, plan.teacher = initial, teacher_model
    return _checked_teacher(plan)


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
    init_from: str | os.PathLike | None = None,
    teacher: str | os.PathLike | None = None,
) -> Plan:
    from mhe_edge.models import load_model
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
    where = f"{folder.name}/{RECORD_FILE}"
    try:
        config = ModelConfig.from_dict(record["config"])
    except (ConfigError, TypeError, ValueError) as exc:
        raise CheckpointError(f"{where}: config: {first_line(exc)}") from exc
    if init_from is not None:  # its weights only ever started the run: the same one, or refused
        if not Path(init_from).exists():
            raise RequestError(f"--init-from {str(init_from)!r} does not exist")
        requested["init_from"] = model_fingerprint(load_model(Path(init_from)))
    teacher_model = None
    if teacher is not None:
        teacher_model = _teacher(teacher, config.vocab_size)
        requested["teacher"] = model_fingerprint(teacher_model)
    shards = _shards_of(list(text_files or []))
    trained_on_shards = record["corpus"].get("kind") == "shards"
    if trained_on_shards and shards is None:
        raise RequestError(
            f"{folder.name} was trained on token shards: give the shards folder"
            f" ({record['corpus'].get('name')}) again with --resume"
        )
    if shards is not None:
        requested["text"] = [shards.digest]
        _shards_tokenizer(shards, None, run_tokenizer)
    elif text_files:
        requested["text"] = [_sha256(Path(p)) for p in text_files]
    resumed = _placed(resumed_options(record, where, requested, run_tokenizer, processes()))
    check_training_fits(config, resumed)  # from the record, before the model is built
    if not text_files and other_python(record["corpus"]) is not None:
        raise RequestError(
            f"TEXT: the recorded run trained on the documentation text of Python"
            f" {other_python(record['corpus'])}, which differs from this Python's; a resumed run keeps"
            " its text: resume it under that Python, or start a new run with --force"
        )
    if teacher_model is None and record.get("teacher") is not None:
        teacher_model = _recorded_teacher(folder, record, where, config.vocab_size)
    stage("text")
    if shards is not None:
        plan = _streamed(record, resumed, config, shards, ShardCorpus.of(shards), resumed=True)
    else:
        corpus = (
            load_corpus(text_files)
            if text_files
            else corpus_from_record(
                record["corpus"], f"as TEXT: mhe-edge train FILE -o {folder} --resume"
            )
        )
        plan = _encoded(record, resumed, config, run_tokenizer, corpus, resumed=True, stage=stage)
    plan.teacher = teacher_model
    return _checked_teacher(plan)


def _placed(options: TrainOptions) -> TrainOptions:
    """`options`, refused when they ask for what these processes cannot do: --fsdp in one process."""
    if options.fsdp and processes() == 1:
        raise RequestError(FSDP_NEEDS_PROCESSES)
    return options


def _teacher(path, vocab_size):
    """The teacher at `path` (checked: a decoder over the student's vocabulary)."""
    from mhe_edge.training.uptraining import load_teacher

    if not Path(path).exists():
        raise RequestError(f"--teacher {str(path)!r} does not exist")
    return load_teacher(Path(path), vocab_size)


def _recorded_teacher(folder: Path, record: dict[str, Any], where: str, vocab_size: int):
    """The teacher a resumed run was trained with, read again from its recorded place and refused when it
    is gone or is no longer the model it was (its fingerprint)."""
    relative = record["teacher"]
    if not isinstance(relative, str) or not record.get("teacher_sha256"):
        raise CheckpointError(f"{where}: the teacher's record is damaged")
    path = folder / relative
    if not path.exists():
        raise RequestError(
            f"the run's teacher ({relative}, relative to the run) is gone: give it with --teacher"
        )
    teacher = _teacher(path, vocab_size)
    if model_fingerprint(teacher) != record["teacher_sha256"]:
        raise RequestError(
            f"the run's teacher ({relative}) changed since the run started; a resumed run keeps its"
            " teacher: give the original with --teacher, or start a new run with --force"
        )
    return teacher


def _checked_teacher(plan: Plan) -> Plan:
    """The teacher must see every training row: refused now when its positions are fewer."""
    if plan.teacher is not None:
        seq_len = row_length(plan.options, plan.config, len(plan.train_ids))
        if plan.teacher.config.max_seq_len < seq_len:
            raise RequestError(
                f"the teacher reads at most {plan.teacher.config.max_seq_len} tokens, fewer than the"
                f" rows of {seq_len}: give --seq-len {plan.teacher.config.max_seq_len} or less"
            )
    return plan


def _encoded(record, options, config, tokenizer, corpus, *, resumed: bool, stage) -> Plan:
    stage("encode")
    eos = np.array([tokenizer.eos_token_id], dtype=np.int64)
    # each document in bounded pieces (one 20 MB line costs its ids, not gigabytes of tokenizer state)
    train_ids = np.concatenate(
        [part for doc in corpus.documents for part in (tokenizer.encode_array(doc), eos)]
        or [eos[:0]]
    )
    held_ids = tokenizer.encode_array(corpus.held_out)
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


def _shards_of(text_files: list) -> Shards | None:
    """The token shards when the one text argument is a shards folder (checked whole), else None."""
    from mhe_edge.text.shards import is_shards_folder, open_shards

    if not any(is_shards_folder(p) for p in text_files):
        return None
    if len(text_files) != 1:
        raise RequestError("give one token shards folder, or text files, not both")
    return open_shards(text_files[0])


def _shards_tokenizer(
    shards: Shards, requested: str | None, run_tokenizer=None, whose: str = "the run's"
):
    """The shards' tokenizer, refused when it is not the one asked for (or `run_tokenizer`: the resumed
    run's, or the starting point's)."""
    from mhe_edge.text.tokenizer import byte_tokenizer, load_tokenizer

    if run_tokenizer is not None:
        wanted = run_tokenizer
    elif requested is None:
        return shards.tokenizer
    elif requested == "bpe":
        raise RequestError("--tokenizer bpe: token shards come with their tokenizer; drop it")
    else:
        wanted = byte_tokenizer() if requested == "bytes" else load_tokenizer(requested)
    if tokenizer_fingerprint(wanted) != shards.index["tokenizer"]["sha256"]:
        whose = whose if run_tokenizer is not None else "the one asked for"
        raise RequestError(
            f"the shards {shards.folder.name} were made with another tokenizer than {whose};"
            " tokenize the text again with it"
        )
    return shards.tokenizer


def _streamed(record, options, config, shards: Shards, corpus, *, resumed: bool) -> Plan:
    """A plan whose training ids are the shards, memory-mapped (nothing is read until a batch is)."""
    if shards.tokenizer.vocab_size > config.vocab_size:
        raise CheckpointError(
            f"the shards' tokenizer has {shards.tokenizer.vocab_size:,} tokens, more than the model's"
            f" vocabulary ({config.vocab_size:,})"
        )
    seq_len = row_length(options, config, len(shards.train))
    held = np.asarray(shards.held[: options.eval_windows * seq_len + 1], dtype=np.int64)
    if len(held) < 2:
        raise RequestError(f"the shards {shards.folder.name} hold no held-out text")
    return Plan(record, options, config, shards.tokenizer, corpus, resumed, shards.train, held)


def check_training_fits(config: ModelConfig, options: TrainOptions) -> None:
    """Refuse (exit 2) a run whose weights, gradients, AdamW state, activations and logits of one
    micro-batch exceed the memory this machine has available, with the estimate."""
    from mhe_edge.accounting import check_fits, training_memory

    seq_len = min(options.seq_len or min(config.max_seq_len, 256), config.max_seq_len)
    check_fits(
        training_memory(config, options.batch, seq_len),
        f"training this model ({config.n_layers} layers of width {config.d_model}, batch"
        f" {options.batch} x {seq_len} tokens)",
        "use a smaller model, --batch or --seq-len",
    )


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
