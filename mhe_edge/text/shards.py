"""Token shards: text of any size tokenized once, into fixed-size files of token ids that training reads
memory-mapped.

A shards folder holds `tokenizer.json` (the tokenizer that made the ids), `index.json` and the shards:
`train-NNNNN.bin` and `held-NNNNN.bin`, raw little-endian uint16 ids (uint32 when the vocabulary does not
fit 16 bits), each `shard_tokens` ids except the last of its split. Every document (a file) ends with
<|endoftext|>; its last HELD_OUT_FRACTION (cut at a line start, as the in-memory corpus is) goes to the
held-out split, which training never samples from.

Text is read in pieces of READ_BYTES cut where the tokenizer's ids do not change (text/pieces.py: before a
space that follows a word, else at a word start), so memory stays bounded by one batch of pieces and one
shard's buffer, whatever the size of the file or its lines. The index records the documents (name, bytes,
sha256, tokens per split), the shards (name, split, tokens, bytes), the tokenizer's sha256 and vocabulary,
and the split; `open_shards` checks all of it against the files before training starts.
"""

from __future__ import annotations

import codecs
import hashlib
import json
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mhe_edge.errors import CheckpointError, RequestError
from mhe_edge.text.corpus import HELD_OUT_FRACTION, Corpus
from mhe_edge.text.pieces import batches

INDEX_FILE, FORMAT, VERSION = "index.json", "mhe-edge-token-shards", 1
READ_BYTES = 1 << 16  # text read per piece (tokenizers holds ~300 bytes per id while it encodes)
DEFAULT_SHARD_TOKENS = 1 << 23  # 8M ids: 16 MiB per uint16 shard
SPLITS = ("train", "held")
MAX_INDEX_BYTES = 50_000_000
MAX_SHARD_FILES = 100_000


def fingerprint(tokenizer) -> str:
    """sha256 of the tokenizer's JSON: ids from tokenizers with the same fingerprint mean the same text."""
    return hashlib.sha256(tokenizer.to_json().encode("utf-8")).hexdigest()


def id_dtype(vocab_size: int) -> np.dtype:
    return np.dtype("<u2") if vocab_size <= 1 << 16 else np.dtype("<u4")


class _ShardWriter:
    """Ids of one split into fixed-size shards; holds at most one shard's ids in memory."""

    def __init__(self, folder: Path, split: str, shard_tokens: int, dtype: np.dtype):
        self.folder, self.split, self.dtype = folder, split, dtype
        self.buffer = np.empty(shard_tokens, dtype=dtype)
        self.filled, self.tokens = 0, 0
        self.shards: list[dict[str, Any]] = []

    def add(self, ids: list[int]) -> None:
        data = np.asarray(ids, dtype=self.dtype)
        while len(data):
            room = len(self.buffer) - self.filled
            self.buffer[self.filled : self.filled + min(room, len(data))] = data[:room]
            self.filled += min(room, len(data))
            data = data[room:]
            if self.filled == len(self.buffer):
                self.flush()
        self.tokens += len(ids)

    def flush(self) -> None:
        if not self.filled:
            return
        name = f"{self.split}-{len(self.shards):05d}.bin"
        self.buffer[: self.filled].tofile(self.folder / name)
        self.shards.append(
            {"name": name, "split": self.split, "tokens": self.filled,
             "bytes": self.filled * self.dtype.itemsize}
        )  # fmt: skip
        self.filled = 0


def text_pieces(
    path: Path, start: int = 0, end: int | None = None, tokenizer=None
) -> Iterator[str]:
    """The UTF-8 text of bytes [start, end) of `path` in pieces of about READ_BYTES characters, cut where
    `tokenizer` (default: plain bytes) keeps its ids (text/pieces.py: before a space that follows a word,
    else at a word start); never more than a piece or two in memory (a word up to MAX_WORD_CHARS)."""
    if tokenizer is None:
        from mhe_edge.text.tokenizer import byte_tokenizer

        tokenizer = byte_tokenizer()
    decoder = codecs.getincrementaldecoder("utf-8")("strict")
    carry = ""
    with open(path, "rb") as file:
        file.seek(start)
        left = (end if end is not None else path.stat().st_size) - start
        while left > 0:
            block = file.read(min(READ_BYTES, left))
            if not block:
                break
            left -= len(block)
            text = carry + decoder.decode(block, final=left <= 0)
            parts = list(tokenizer.pieces(text, whole_unless_exact=False))
            carry = parts.pop() if left > 0 and parts else ""  # the last piece may go on
            yield from (part for part in parts if part)
        if carry:
            yield carry


def held_out_start(path: Path) -> int:
    """The byte where a file's held-out tail begins: the first line start in its last HELD_OUT_FRACTION
    (the in-memory corpus cuts the same way, by characters)."""
    size = path.stat().st_size
    cut = size - int(size * HELD_OUT_FRACTION)
    with open(path, "rb") as file:
        file.seek(cut)
        tail = file.read(min(size - cut, 1 << 20))
    return cut + _line_start(tail)


def held_out_start_of(data: bytes) -> int:
    """`held_out_start` of a file's bytes held in memory (to find a shards document's held-out tail)."""
    cut = len(data) - int(len(data) * HELD_OUT_FRACTION)
    return cut + _line_start(data[cut : cut + (1 << 20)])


def _line_start(tail: bytes) -> int:
    newline = tail.find(b"\n")
    if 0 <= newline < len(tail) - 1:
        return newline + 1
    skip = 0  # no line start: the first character boundary
    while skip < len(tail) and tail[skip] & 0xC0 == 0x80:
        skip += 1
    return skip


def tokenize_files(
    paths: list[Path],
    stage: Path,
    tokenizer,
    shard_tokens: int = DEFAULT_SHARD_TOKENS,
    on_progress: Callable[[int, int], None] | None = None,
) -> dict[str, Any]:
    """Tokenize `paths` into shards in the (staging) folder `stage`; returns the index written there."""
    if not 1024 <= shard_tokens <= 1 << 30:
        raise RequestError(f"--shard-tokens must be 1024 to {1 << 30}, not {shard_tokens}")
    for path in paths:
        if not path.is_file():
            raise RequestError(f"text file {str(path)!r} does not exist or is not a file")
    total = sum(p.stat().st_size for p in paths)
    dtype = id_dtype(tokenizer.vocab_size)
    writers = {split: _ShardWriter(stage, split, shard_tokens, dtype) for split in SPLITS}
    eos, done = tokenizer.eos_token_id, 0
    documents: list[dict[str, Any]] = []
    # without offsets when tokenizers can (the same ids, less time and memory)
    encode = getattr(tokenizer.backend, "encode_batch_fast", tokenizer.backend.encode_batch)
    for path in paths:
        digest, cut, counts = hashlib.sha256(), held_out_start(path), {}
        for split, (start, end) in zip(SPLITS, ((0, cut), (cut, path.stat().st_size))):
            before = writers[split].tokens
            try:
                for batch in batches(text_pieces(path, start, end, tokenizer)):
                    for piece, encoded in zip(batch, encode(batch, add_special_tokens=False)):
                        ids = encoded.ids
                        data = piece.encode("utf-8")
                        digest.update(data)
                        writers[split].add(ids)
                        done += len(data)
                    if on_progress:
                        on_progress(done, total)
            except UnicodeDecodeError as exc:
                raise RequestError(f"{path.name} is not UTF-8 text: {exc.reason}") from None
            writers[split].add([eos])
            counts[split] = writers[split].tokens - before
        documents.append(
            {"name": path.name, "bytes": path.stat().st_size, "sha256": digest.hexdigest(),
             "train_tokens": counts["train"], "held_out_tokens": counts["held"],
             "held_out_bytes": path.stat().st_size - cut}
        )  # fmt: skip
    for writer in writers.values():
        writer.flush()
    tokenizer.save(stage)
    index = {
        "format": FORMAT,
        "version": VERSION,
        "dtype": "uint16" if dtype.itemsize == 2 else "uint32",
        "shard_tokens": shard_tokens,
        "tokenizer": {
            "sha256": fingerprint(tokenizer),
            "vocab_size": tokenizer.vocab_size,
            "eos_token_id": eos,
        },
        "held_out_fraction": HELD_OUT_FRACTION,
        "documents": documents,
        "shards": writers["train"].shards + writers["held"].shards,
        "train_tokens": writers["train"].tokens,
        "held_out_tokens": writers["held"].tokens,
        "held_out_bytes": sum(d["held_out_bytes"] for d in documents),
    }
    (stage / INDEX_FILE).write_text(json.dumps(index, indent=1) + "\n")
    return index


class TokenStream:
    """One split's shards as one 1-D array of ids, memory-mapped: `len`, and slices (a window may span two
    shards). Nothing is read until it is sliced."""

    def __init__(self, maps: list[np.ndarray]):
        self.maps = maps
        self.starts = np.cumsum([0] + [len(m) for m in maps])

    def __len__(self) -> int:
        return int(self.starts[-1])

    def __getitem__(self, item: slice) -> np.ndarray:
        start, stop, _ = item.indices(len(self))
        parts, shard = [], int(np.searchsorted(self.starts, start, side="right")) - 1
        while start < stop and shard < len(self.maps):
            offset = start - int(self.starts[shard])
            take = min(stop - start, len(self.maps[shard]) - offset)
            parts.append(np.asarray(self.maps[shard][offset : offset + take], dtype=np.int64))
            start, shard = start + take, shard + 1
        return np.concatenate(parts) if parts else np.empty(0, dtype=np.int64)


@dataclass
class Shards:
    folder: Path
    index: dict[str, Any]
    tokenizer: Any  # TextTokenizer
    train: TokenStream
    held: TokenStream

    @property
    def digest(self) -> str:
        """sha256 of the index: names these shards in a run's record."""
        return hashlib.sha256((self.folder / INDEX_FILE).read_bytes()).hexdigest()


def is_shards_folder(path: str | os.PathLike) -> bool:
    return Path(path).is_dir() and (Path(path) / INDEX_FILE).is_file()


def open_shards(folder: str | os.PathLike, check_ids: bool = True) -> Shards:
    """A shards folder, checked before training: the index's schema, the tokenizer beside it (its sha256
    must be the index's), every shard present, a plain file, exactly as long as the index says, and (with
    `check_ids`) every id inside the vocabulary. Any mismatch is a CheckpointError naming it."""
    from mhe_edge.text.tokenizer import load_tokenizer

    folder = Path(folder)
    name = folder.name
    index = _read_index(folder)
    tokenizer = load_tokenizer(folder)
    if fingerprint(tokenizer) != index["tokenizer"]["sha256"]:
        raise CheckpointError(f"{name}: tokenizer.json is not the tokenizer its index names")
    if tokenizer.vocab_size != index["tokenizer"]["vocab_size"]:
        raise CheckpointError(f"{name}: the index's vocabulary size is not its tokenizer's")
    dtype = np.dtype("<u2") if index["dtype"] == "uint16" else np.dtype("<u4")
    maps: dict[str, list[np.ndarray]] = {split: [] for split in SPLITS}
    for shard in index["shards"]:
        path = folder / shard["name"]
        if path.is_symlink() or not path.is_file():
            raise CheckpointError(f"{name}: the shard {shard['name']} is missing")
        size = path.stat().st_size
        if size != shard["tokens"] * dtype.itemsize or size != shard["bytes"]:
            raise CheckpointError(
                f"{name}: the shard {shard['name']} holds {size:,} bytes; its index says"
                f" {shard['tokens']:,} ids of {dtype.itemsize} bytes (truncated or replaced?)"
            )
        if check_ids and size and _largest_id(path, dtype) >= tokenizer.vocab_size:
            raise CheckpointError(
                f"{name}: the shard {shard['name']} holds ids beyond its tokenizer's vocabulary"
            )
        ids = np.memmap(path, dtype=dtype, mode="r") if size else np.empty(0, dtype=dtype)
        maps[shard["split"]].append(ids)
    for split, key in (("train", "train_tokens"), ("held", "held_out_tokens")):
        if sum(len(m) for m in maps[split]) != index[key]:
            raise CheckpointError(f"{name}: its {split} shards do not add up to the index's {key}")
    return Shards(folder, index, tokenizer, TokenStream(maps["train"]), TokenStream(maps["held"]))


def _largest_id(path: Path, dtype: np.dtype, block_ids: int = 1 << 22) -> int:
    """The largest id in a shard, read in blocks into one buffer (a memory map would leave the whole file
    resident)."""
    buffer, largest = np.empty(block_ids, dtype=dtype), 0
    with open(path, "rb") as file:
        while True:
            count = file.readinto(buffer.data.cast("B")) // dtype.itemsize
            if not count:
                return largest
            largest = max(largest, int(buffer[:count].max()))


def _read_index(folder: Path) -> dict[str, Any]:
    path, name = folder / INDEX_FILE, folder.name
    if path.stat().st_size > MAX_INDEX_BYTES:
        raise CheckpointError(f"{name}/{INDEX_FILE} is too large to be a shard index")
    try:
        index = json.loads(path.read_bytes().decode("utf-8"))
    except (ValueError, RecursionError):
        raise CheckpointError(f"{name}/{INDEX_FILE} is not JSON") from None

    def need(ok: bool, what: str) -> None:
        if not ok:
            raise CheckpointError(f"{name}/{INDEX_FILE}: {what}")

    need(isinstance(index, dict) and index.get("format") == FORMAT, f"not an {FORMAT} index")
    need(index.get("version") == VERSION, f"version {index.get('version')!r} is not {VERSION}")
    need(index.get("dtype") in ("uint16", "uint32"), "dtype must be uint16 or uint32")
    tokenizer = index.get("tokenizer")
    need(
        isinstance(tokenizer, dict)
        and isinstance(tokenizer.get("sha256"), str)
        and _count(tokenizer.get("vocab_size")),
        "tokenizer must name its sha256 and vocab_size",
    )
    need(
        index["dtype"] == "uint32" or tokenizer["vocab_size"] <= 1 << 16,
        "uint16 ids, larger vocabulary",
    )
    for key in ("train_tokens", "held_out_tokens", "held_out_bytes"):
        need(_count(index.get(key)), f"{key} must be a count")
    shards = index.get("shards")
    need(isinstance(shards, list) and len(shards) <= MAX_SHARD_FILES, "shards must be a list")
    names = set()
    for shard in shards:
        need(isinstance(shard, dict), "each shard must be a mapping")
        shard_name = shard.get("name")
        need(
            isinstance(shard_name, str)
            and shard_name == Path(shard_name).name
            and shard_name.endswith(".bin")
            and shard_name not in names,
            f"shard name {shard_name!r} is not a plain, unique .bin file name",
        )
        names.add(shard_name)
        need(shard.get("split") in SPLITS, f"{shard_name}: split must be train or held")
        need(_count(shard.get("tokens")) and _count(shard.get("bytes")), f"{shard_name}: sizes")
    need(index["train_tokens"] > 0, "no training ids")
    return index


def _count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 1 << 50


@dataclass
class ShardCorpus(Corpus):
    """Token shards as the corpus of a run: their held-out text (a bounded prefix, decoded whole) for the
    final evaluation, and a record that names them by their index's sha256 (never a path)."""

    summary: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def of(cls, shards: Shards) -> ShardCorpus:
        index = shards.index
        summary = {
            "kind": "shards",
            "name": shards.folder.name,
            "sources": [{"name": shards.folder.name, "sha256": shards.digest}],
            "documents": [
                {k: d.get(k) for k in ("name", "bytes", "sha256")} for d in index["documents"]
            ],
            "held_out_fraction": index.get("held_out_fraction"),
            "train_tokens": index["train_tokens"],
            "held_out_tokens": index["held_out_tokens"],
        }
        held = _held_out_text(shards)
        return cls(shards.folder.name, [], [], held, summary=summary)

    def record(self) -> dict[str, Any]:
        return dict(self.summary)


HELD_OUT_TOKENS = (
    1 << 15
)  # the final evaluation of a shards run scores at most this many held-out ids


def _held_out_text(shards: Shards) -> str:
    """The held-out split's first documents up to HELD_OUT_TOKENS ids, decoded: cut after an
    <|endoftext|> (or, in one longer document, where the bytes decode whole)."""
    ids = shards.held[:HELD_OUT_TOKENS]
    eos = np.flatnonzero(ids == shards.tokenizer.eos_token_id)
    if len(eos):
        ids = ids[: int(eos[-1])]
    for trim in range(4):  # a cut inside a multi-byte character decodes to U+FFFD
        text = shards.tokenizer.decode(ids[: len(ids) - trim].tolist())
        if not text.endswith("\ufffd"):
            return text
    return text
