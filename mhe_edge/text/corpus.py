"""Training text and its fixed held-out split.

By default the corpus is text every Python ships: the English of Python's documentation topics
(`pydoc_data.topics`, ~465K characters), so training works on a fresh machine with nothing downloaded.
Otherwise it is the user's UTF-8 text files. The held-out split is fixed: the last 5% of each document or file (cut
at a line start), so evaluation after training always reads the same characters.
"""

from __future__ import annotations

import hashlib
import math
import os
import platform
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mhe_edge.errors import CheckpointError, MheEdgeError, RequestError

BUILTIN = "python-docs"  # the name a folder records for the default corpus
BUILTIN_SOURCE = (
    "pydoc_data.topics"  # its one source, recorded with its sha256 and the Python version
)
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
    ]  # {"name", "bytes", "sha256"} per file (never a path); the builtin text's with its Python version
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


def documents_sha256(documents: Sequence[str]) -> str:
    """sha256 of documents as used: each one's UTF-8 length (8 bytes) and bytes, so no two lists collide."""
    digest = hashlib.sha256()
    for document in documents:
        data = document.encode("utf-8")
        digest.update(len(data).to_bytes(8, "little"))
        digest.update(data)
    return digest.hexdigest()


def builtin_source(documents: Sequence[str]) -> dict[str, Any]:
    """The builtin text's record: it changes between Python versions, so a run records which it read."""
    return {
        "name": BUILTIN_SOURCE,
        "python": platform.python_version(),
        "bytes": sum(len(d.encode("utf-8")) for d in documents),
        "sha256": documents_sha256(documents),
    }


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
        # by name and content only: a record never says where the user keeps their text
        sources.append(
            {"name": path.name, "bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
        )
    return texts, sources


def other_python(record: dict[str, Any], corpus: Corpus | None = None) -> str | None:
    """The Python version whose builtin text a record hashed, when this Python's differs; else None (a
    record of an older mhe-edge holds no hash: it is taken as it was)."""
    recorded = [s for s in record.get("sources") or [] if isinstance(s, dict)]
    if record.get("name") != BUILTIN or not recorded:
        return None
    corpus = corpus or load_corpus()
    if recorded[0].get("sha256") == corpus.sources[0]["sha256"]:
        return None
    return str(recorded[0].get("python", "?"))


def held_out_cut(document: str) -> int:
    """Where a document's held-out tail begins: the first line start in its last HELD_OUT_FRACTION."""
    cut = len(document) - int(len(document) * HELD_OUT_FRACTION)
    newline = document.find("\n", cut)
    if 0 <= newline < len(document) - 1:
        cut = newline + 1
    return cut


def joined_held_out(tails: Sequence[str]) -> str:
    """Held-out tails as one text, each ending with a newline."""
    return "".join(h if h.endswith("\n") else h + "\n" for h in tails if h)


def split_held_out(documents: list[str]) -> tuple[list[str], str]:
    """The last HELD_OUT_FRACTION of every document, cut at a line start, as held-out text; the rest for
    training. Taking a tail of each document (not the corpus's last pages) makes the held-out text a sample
    of all of it: every topic of the default corpus, every file given."""
    total = sum(map(len, documents))
    if total < MIN_TEXT_CHARS:
        raise RequestError(
            f"the text has {total:,} characters; training needs at least {MIN_TEXT_CHARS:,}"
        )
    cuts = [held_out_cut(document) for document in documents]
    train = [document[:cut] for document, cut in zip(documents, cuts)]
    return [d for d in train if d], joined_held_out([d[c:] for d, c in zip(documents, cuts)])


def load_corpus(text_files: Sequence[str | os.PathLike] | None = None) -> Corpus:
    """The user's text files, or the builtin Python documentation text, split into training and held-out text."""
    if text_files:
        documents, sources = read_text_files(text_files)
        name = ", ".join(s["name"] for s in sources)
    else:
        documents, name = builtin_documents(), BUILTIN
        sources = [builtin_source(documents)]
    train, held_out = split_held_out(documents)
    return Corpus(name, sources, train, held_out)


def corpus_from_record(record: dict[str, Any], how: str = "with --text") -> Corpus:
    """The corpus a training record (`Corpus.record()`) names, rebuilt: only the builtin text can be, and
    only when it is the text the record hashed (another Python's documentation differs). User files are
    recorded by name and sha256, never by path: they must be given again (`how`: "with --text")."""
    if record.get("name") == BUILTIN:
        corpus = load_corpus()
        other = other_python(record, corpus)
        if other is not None:
            raise RequestError(
                f"the model was trained on the documentation text of Python {other}; this Python's"
                f" ({platform.python_version()}) differs, so its held-out split is not the model's:"
                f" give text files {how}"
            )
        return corpus
    if record.get("kind") == "shards":
        raise RequestError(
            f"the model was trained on the token shards {record.get('name')!r}; give text {how}"
        )
    names = [str(s.get("name", s.get("path", "?"))) for s in record.get("sources") or []]
    if not names:
        raise RequestError(f"the model's training record names no text; give it {how}")
    raise RequestError(
        f"the training text ({', '.join(Path(n).name for n in names)}) is recorded by name and sha256,"
        f" not by where it was: give it again {how} (its held-out split is then found by its hash)"
    )


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
    check_corpus_record(record["corpus"], f"{folder.name}/{RECORD_FILE} corpus", CheckpointError)
    return record


_SHA256 = re.compile(r"[0-9a-f]{64}")
MAX_RECORDED_FILES = 100_000


def check_corpus_record(
    record: Any, where: str, error: type[MheEdgeError] = CheckpointError
) -> dict[str, Any]:
    """A corpus record (`Corpus.record()`, a shards run's summary), checked field by field before any use:
    a name, `sources` and `documents` lists of {name, bytes, sha256 (64 hex digits)[, python]}, counts that
    are whole numbers, a fraction in (0, 1). One `error` naming the field."""

    def refuse(field: str, value: Any, wanted: str) -> MheEdgeError:
        return error(f"{where}: field {field}={value!r:.60} is not {wanted}")

    def count(value: Any) -> bool:
        return isinstance(value, int) and not isinstance(value, bool) and value >= 0

    if not isinstance(record, dict):
        raise error(f"{where} is not a JSON object")
    if not isinstance(record.get("name"), str):
        raise refuse("name", record.get("name"), "a string")
    if record.get("kind") not in (None, "shards"):
        raise refuse("kind", record.get("kind"), '"shards" or absent')
    for key in ("sources", "documents"):
        items = record.get(key, [])
        if not isinstance(items, list) or len(items) > MAX_RECORDED_FILES:
            raise refuse(key, items, f"a list of at most {MAX_RECORDED_FILES:,} files")
        for i, item in enumerate(items):
            if not isinstance(item, dict):
                raise refuse(f"{key}[{i}]", item, "an object")
            if not (isinstance(item.get("sha256"), str) and _SHA256.fullmatch(item["sha256"])):
                raise refuse(f"{key}[{i}].sha256", item.get("sha256"), "a sha256 digest")
            for text in ("name", "path", "python"):
                if text in item and not isinstance(item[text], str):
                    raise refuse(f"{key}[{i}].{text}", item[text], "a string")
            if "bytes" in item and not count(item["bytes"]):
                raise refuse(f"{key}[{i}].bytes", item["bytes"], "a byte count")
    for key in ("train_chars", "held_out_chars", "train_tokens", "held_out_tokens"):
        if record.get(key) is not None and not count(record[key]):
            raise refuse(key, record[key], "a whole number")
    fraction = record.get("held_out_fraction")
    if fraction is not None and not (
        isinstance(fraction, (int, float))
        and not isinstance(fraction, bool)
        and math.isfinite(fraction)
        and 0 < fraction < 1
    ):
        raise refuse("held_out_fraction", fraction, "a fraction between 0 and 1")
    return record
