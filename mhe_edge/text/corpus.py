"""Training text and its fixed held-out split.

By default the corpus is text every Python ships: the English of Python's documentation topics
(`pydoc_data.topics`, ~465K characters), so training works on a fresh machine with nothing downloaded.
Otherwise it is the user's UTF-8 text files. The held-out split is fixed: the last 5% of each document or file (cut
at a line start), so evaluation after training always reads the same characters.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mhe_edge.errors import CheckpointError, RequestError

BUILTIN = "python-docs"  # the name a folder records for the default corpus
RECORD_FILE = (
    "training.json"  # in a trained model folder: the corpus (below), tokenizer, options and results
)
HELD_OUT_FRACTION = 0.05
MAX_TEXT_BYTES = (
    2 << 30
)  # 2 GiB of text in all: far beyond what trains on one machine, far below running out of memory
MIN_TEXT_CHARS = 2_000  # below this there is nothing to hold out
MAX_RECORD_BYTES = 50_000_000  # a record is a few kB (its log lives in train_log.jsonl)
RECORD_SECTIONS = ("config", "corpus", "options")  # each a mapping, in every record


@dataclass
class Corpus:
    name: str  # BUILTIN, or the files' names
    sources: list[
        dict[str, Any]
    ]  # {"path", "bytes", "sha256"} per file; empty for the builtin text
    documents: list[
        str
    ]  # the training text, as documents (each one ends with <|endoftext|> when tokenized)
    held_out: str  # the fixed held-out text
    description: dict[str, Any] = field(default_factory=dict)

    def record(self) -> dict[str, Any]:
        """What a model folder keeps, so `eval` can rebuild the same held-out text later."""
        return {
            "name": self.name,
            "sources": self.sources,
            "held_out_fraction": HELD_OUT_FRACTION,
            "train_chars": sum(map(len, self.documents)),
            "held_out_chars": len(self.held_out),
        }


def builtin_documents() -> list[str]:
    import pydoc_data.topics

    return [pydoc_data.topics.topics[key] for key in sorted(pydoc_data.topics.topics)]


def read_text_files(paths: Sequence[str | os.PathLike]) -> tuple[list[str], list[dict[str, Any]]]:
    """The files' text, checked: present, regular, within the size limit, UTF-8."""
    files = [Path(p) for p in paths]
    for path in files:
        if not path.is_file():
            raise RequestError(f"text file {str(path)!r} does not exist or is not a file")
    total = sum(p.stat().st_size for p in files)
    if total > MAX_TEXT_BYTES:
        raise RequestError(
            f"the text files hold {total:,} bytes; mhe-edge reads at most {MAX_TEXT_BYTES:,}"
        )
    texts, sources = [], []
    for path in files:
        data = path.read_bytes()
        try:
            texts.append(data.decode("utf-8"))
        except UnicodeDecodeError as exc:
            raise RequestError(
                f"{path.name} is not UTF-8 text (byte {exc.start}): give plain text files"
            ) from None
        sources.append(
            {
                "path": str(path.resolve()),
                "bytes": len(data),
                "sha256": hashlib.sha256(data).hexdigest(),
            }
        )
    return texts, sources


def split_held_out(documents: list[str]) -> tuple[list[str], str]:
    """The last HELD_OUT_FRACTION of every document, cut at a line start, as held-out text; the rest for
    training. Taking a tail of each document (not the corpus's last pages) makes the held-out text a sample
    of all of it: every topic of the default corpus, every file given."""
    total = sum(map(len, documents))
    if total < MIN_TEXT_CHARS:
        raise RequestError(
            f"the text has {total:,} characters; training needs at least {MIN_TEXT_CHARS:,}"
        )
    train, held = [], []
    for document in documents:
        cut = len(document) - int(len(document) * HELD_OUT_FRACTION)
        newline = document.find("\n", cut)
        if 0 <= newline < len(document) - 1:
            cut = newline + 1
        train.append(document[:cut])
        held.append(document[cut:])
    return [d for d in train if d], "".join(h if h.endswith("\n") else h + "\n" for h in held if h)


def load_corpus(text_files: Sequence[str | os.PathLike] | None = None) -> Corpus:
    """The user's text files, or the builtin Python documentation text, split into training and held-out text."""
    if text_files:
        documents, sources = read_text_files(text_files)
        name = ", ".join(Path(s["path"]).name for s in sources)
    else:
        documents, sources, name = builtin_documents(), [], BUILTIN
    train, held_out = split_held_out(documents)
    return Corpus(name, sources, train, held_out)


def corpus_from_record(record: dict[str, Any]) -> Corpus:
    """The corpus a training record (`Corpus.record()`) names, rebuilt; refuses if its files changed or moved."""
    if record.get("name") == BUILTIN:
        return load_corpus()
    if record.get("kind") == "shards":
        raise RequestError(
            f"the model was trained on the token shards {record.get('name')!r}; give --text"
        )
    paths = [s["path"] for s in record.get("sources", [])]
    if not paths:
        raise RequestError("the model's training record names no text; give --text")
    for source in record["sources"]:
        path = Path(source["path"])
        if not path.is_file() or hashlib.sha256(path.read_bytes()).hexdigest() != source.get(
            "sha256"
        ):
            raise RequestError(
                f"the training text {path.name} is gone or changed since training; give --text"
            )
    return load_corpus(paths)


def held_out_from_record(record: dict[str, Any]) -> tuple[str, str]:
    """(the held-out text a training record names, a description of it for reports)."""
    return corpus_from_record(
        record
    ).held_out, f"held-out split of {record.get('name', 'the training text')}"


def read_training_record(folder: str | os.PathLike) -> dict[str, Any] | None:
    """The training record (RECORD_FILE) of a model folder, or None when it has none; the one reader of it.

    Checked before use: a regular file of sane size, a JSON object whose sections are mappings; anything
    else is a CheckpointError naming the folder. The sections' contents are checked by their users (the
    config by ModelConfig, the options by training, the corpus by `corpus_from_record`)."""
    import json

    folder = Path(folder)
    path = folder / RECORD_FILE
    if not path.exists():
        return None
    if not path.is_file():
        raise CheckpointError(f"{folder.name}/{RECORD_FILE} is not a regular file")
    if path.stat().st_size > MAX_RECORD_BYTES:
        raise CheckpointError(f"{folder.name}/{RECORD_FILE} is too large to be a training record")
    try:
        record = json.loads(path.read_bytes().decode("utf-8"))
    except (ValueError, RecursionError) as exc:  # UnicodeDecodeError is a ValueError
        raise CheckpointError(f"{folder.name}/{RECORD_FILE} is not JSON: {exc}") from None
    if not isinstance(record, dict):
        raise CheckpointError(f"{folder.name}/{RECORD_FILE} is not a JSON object")
    for section in RECORD_SECTIONS:
        if not isinstance(record.get(section), dict):
            raise CheckpointError(f"{folder.name}/{RECORD_FILE} has no {section!r} mapping")
    return record
