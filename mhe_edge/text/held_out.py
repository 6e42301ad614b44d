"""The text a trained model is judged on, found without a path: training records name their text files
by name and sha256 only, so the user gives the files again (`--text`, `--eval-text`) and each one whose
hash the record holds is scored on its held-out tail alone, the part training never saw; any other file
is new text, scored whole. The builtin corpus needs no file: it is rebuilt and checked against its hash."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from mhe_edge.contract import KEY_TEXT
from mhe_edge.errors import ModelFileError
from mhe_edge.text.corpus import (
    check_corpus_record,
    corpus_from_record,
    held_out_cut,
    joined_held_out,
    read_text_files,
)


@dataclass
class ScoredText:
    body: str  # what is scored
    description: str  # for reports: "held-out split of notes.txt", "other.txt"
    train_documents: list[str] | None  # the training parts, when the whole training text is known
    record: dict[str, Any] | None  # the training corpus record, when `body` is its held-out split


def corpus_record_of_export(metadata: dict[str, str], name: str) -> dict[str, Any] | None:
    """The training-text record an export carries (checked: bounded JSON, every field of its kind;
    a damaged one is a ModelFileError naming the field), or None."""
    from mhe_edge.files.onnx_model import parse_metadata_json

    text = metadata.get(KEY_TEXT)
    if text is None:
        return None
    record = parse_metadata_json(text, KEY_TEXT, name)
    return check_corpus_record(record, f"{name}: metadata {KEY_TEXT}", ModelFileError)


def scored_text(
    files: Sequence[str | os.PathLike] | None,
    record: dict[str, Any] | None,
    how: str = "with --text",
) -> ScoredText | None:
    """What to score: the `files` (each training file among them by its held-out tail), else the held-out
    split of the builtin text the `record` names; None with neither. A record of user files without the
    files is a RequestError asking for them (`how`)."""
    if not files:
        if record is None:
            return None
        corpus = corpus_from_record(record, how)
        return ScoredText(
            corpus.held_out, f"held-out split of {corpus.name}", corpus.documents, record
        )
    texts, sources = read_text_files(files)
    rules = _recorded_cuts(record)
    parts, train, names = [], [], []
    for text, source in zip(texts, sources):
        rule = rules.get(source["sha256"])
        if rule is None:
            parts.append(text)
            names.append(source["name"])
            continue
        cut = held_out_cut(text) if rule == "chars" else _byte_cut(text)
        parts.append(text[cut:])
        train.append(text[:cut])
        names.append(f"held-out split of {source['name']}")
    if len(train) < len(texts):  # new text among them: scored whole, as given
        return ScoredText("\n".join(parts), ", ".join(names), None, None)
    recorded = [s.get("sha256") for s in (record or {}).get("sources") or []]
    whole = record is not None and record.get("kind") != "shards"
    whole = whole and recorded == [s["sha256"] for s in sources]
    return ScoredText(
        joined_held_out(parts),
        ", ".join(names),
        [t for t in train if t] if whole else None,
        record if whole else None,
    )


def _recorded_cuts(record: dict[str, Any] | None) -> dict[str, str]:
    """sha256 of each training file the record names -> how its held-out tail was cut: "chars" (the
    in-memory corpus) or "bytes" (token shards)."""
    if record is None:
        return {}
    if record.get("kind") == "shards":
        return {d["sha256"]: "bytes" for d in record.get("documents") or []}
    return {s["sha256"]: "chars" for s in record.get("sources") or []}


def _byte_cut(text: str) -> int:
    """The character where token shards cut a file's held-out tail (they cut its bytes)."""
    from mhe_edge.text.shards import held_out_start_of

    data = text.encode("utf-8")
    return len(data[: held_out_start_of(data)].decode("utf-8"))
