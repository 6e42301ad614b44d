"""The tokenizer a model folder carries: Hugging Face `tokenizers` byte-level BPE (or plain bytes) saved as
`tokenizer.json`, the file transformers and onnxruntime-genai read, with `tokenizer_config.json` and
`special_tokens_map.json` beside it. One special token, `<|endoftext|>` (id 0), begins and ends documents,
as in GPT-2; byte-level means any text, in any script, encodes without unknown tokens."""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from mhe_edge.contract import KEY_TOKENIZER
from mhe_edge.errors import CheckpointError, ModelFileError, RequestError, first_line
from mhe_edge.options import BPE_VOCAB
from mhe_edge.text.pieces import PIECE_CHARS, batches, pieces, splits_exactly

TOKENIZER_FILE, TOKENIZER_CONFIG_FILE, SPECIAL_TOKENS_FILE = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
)
END_OF_TEXT = "<|endoftext|>"
MAX_TOKENIZER_BYTES = (
    100_000_000  # a 256K-token BPE vocabulary is ~20 MB; anything larger is not a tokenizer
)


class TextTokenizer:
    """Text <-> ids with a `tokenizers.Tokenizer`, and the special ids a model needs."""

    def __init__(self, backend):
        self.backend = backend
        self._splits: tuple[bool, bool] | None = (
            None  # text/pieces.splits_exactly, when first needed
        )
        self.eos_token_id = backend.token_to_id(END_OF_TEXT)
        self.bos_token_id = self.eos_token_id

    @property
    def vocab_size(self) -> int:
        return self.backend.get_vocab_size(with_added_tokens=True)

    def encode(self, text: str) -> list[int]:
        if len(text) <= PIECE_CHARS:
            return self.backend.encode(text, add_special_tokens=False).ids
        return self.encode_array(text).tolist()

    def pieces(self, text: str, whole_unless_exact: bool = True) -> Iterator[str]:
        """`text` in bounded pieces whose ids, joined, are its ids (text/pieces.py); whole when this
        tokenizer cannot be cut exactly (unless not `whole_unless_exact`: token shards of any size)."""
        if self._splits is None:
            self._splits = splits_exactly(self.to_json())
        exact, merges = self._splits
        if exact or not whole_unless_exact:
            return pieces(text, self.backend, merges)
        return iter([text])

    def _encoded_pieces(self, text: str) -> Iterator[tuple[str, list[int]]]:
        encode = getattr(self.backend, "encode_batch_fast", self.backend.encode_batch)
        for batch in batches(self.pieces(text)):
            for piece, encoded in zip(batch, encode(batch, add_special_tokens=False)):
                yield piece, encoded.ids

    def encode_array(self, text: str) -> np.ndarray:
        """The ids of `text` as int64, encoded in bounded pieces: memory grows with the ids, not with
        what the tokenizers library holds per id while it encodes."""
        parts = [np.asarray(ids, dtype=np.int32) for _, ids in self._encoded_pieces(text)]
        return np.concatenate(parts).astype(np.int64) if parts else np.zeros(0, np.int64)

    def encode_exactly(self, text: str, what: str) -> list[int]:
        """The ids of `text`, or a RequestError when they do not decode back to it (characters the
        tokenizer cannot encode, an unknown-token fallback): scoring or continuing such ids would count
        or answer text that was never seen."""
        return self.ids_exactly(text, what).tolist()

    def ids_exactly(self, text: str, what: str) -> np.ndarray:
        """`encode_exactly` as an int64 array, checked piece by piece (bounded memory for any text)."""
        parts, offset = [], 0
        for piece, ids in self._encoded_pieces(text):
            back = self.decode(ids)
            if back != piece:
                at = next(
                    (i for i, (a, b) in enumerate(zip(piece, back)) if a != b),
                    min(len(piece), len(back)),
                )
                shown = repr(piece[at]) if at < len(piece) else "the end"
                raise RequestError(
                    f"{what} does not survive this tokenizer: {shown} at character {offset + at:,}"
                    " does not encode (its ids decode to other text)"
                )
            parts.append(np.asarray(ids, dtype=np.int32))
            offset += len(piece)
        return np.concatenate(parts).astype(np.int64) if parts else np.zeros(0, np.int64)

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return [e.ids for e in self.backend.encode_batch(texts, add_special_tokens=False)]

    def decode(self, ids: Iterable[int]) -> str:
        return self.backend.decode(list(ids), skip_special_tokens=True)

    def to_json(self) -> str:
        return self.backend.to_str()

    def save(self, folder: str | os.PathLike) -> None:
        """tokenizer.json and the two small files transformers' AutoTokenizer and onnxruntime-genai look for."""
        folder = Path(folder)
        self.backend.save(str(folder / TOKENIZER_FILE))
        config = {
            "tokenizer_class": "PreTrainedTokenizerFast",
            "bos_token": END_OF_TEXT,
            "eos_token": END_OF_TEXT,
            "unk_token": None,
            "pad_token": END_OF_TEXT,
            "add_bos_token": False,
            "add_eos_token": False,
            "clean_up_tokenization_spaces": False,
            "model_max_length": 1_000_000,
        }
        (folder / TOKENIZER_CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n")
        specials = {"bos_token": END_OF_TEXT, "eos_token": END_OF_TEXT, "pad_token": END_OF_TEXT}
        (folder / SPECIAL_TOKENS_FILE).write_text(json.dumps(specials, indent=2) + "\n")


def _byte_level_parts():
    from tokenizers import decoders, pre_tokenizers, processors

    return (
        pre_tokenizers.ByteLevel(add_prefix_space=False),
        decoders.ByteLevel(),
        processors.ByteLevel(trim_offsets=False),
    )


def train_bpe(texts: Iterable[str], vocab_size: int) -> TextTokenizer:
    """Byte-level BPE learned from `texts`, with at most `vocab_size` tokens (fewer if the text runs out of merges)."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    BPE_VOCAB.check(vocab_size)  # at least the 256 bytes and END_OF_TEXT
    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer, backend.decoder, backend.post_processor = _byte_level_parts()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[END_OF_TEXT],
        show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    # in bounded pieces cut between words (the trainer counts words: the same counts as whole texts)
    backend.train_from_iterator(
        (piece for text in texts for piece in pieces(text, backend, True)), trainer=trainer
    )
    return TextTokenizer(backend)


def byte_tokenizer() -> TextTokenizer:
    """One token per UTF-8 byte (id 1 + byte's position in the byte-level alphabet), plus <|endoftext|> as id 0."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {END_OF_TEXT: 0}
    for symbol in sorted(pre_tokenizers.ByteLevel.alphabet()):
        vocab[symbol] = len(vocab)
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    backend.add_special_tokens([END_OF_TEXT])
    backend.pre_tokenizer, backend.decoder, backend.post_processor = _byte_level_parts()
    return TextTokenizer(backend)


def tokenizer_from_json(text: str, name: str) -> TextTokenizer:
    """A tokenizer.json held in a string (an export's metadata), checked as a file would be."""
    from tokenizers import Tokenizer

    if len(text) > MAX_TOKENIZER_BYTES:
        raise CheckpointError(
            f"{name}: its tokenizer is {len(text):,} characters; a tokenizer is at most {MAX_TOKENIZER_BYTES:,}"
        )
    try:
        tokenizer = TextTokenizer(Tokenizer.from_str(text))
    except (
        Exception
    ) as exc:  # tokenizers raises plain Exception subclasses with its parser's message
        raise CheckpointError(
            f"{name}: its tokenizer is not a tokenizers tokenizer.json: {first_line(exc)}"
        ) from exc
    if tokenizer.eos_token_id is None:
        raise CheckpointError(
            f"{name}: its tokenizer has no {END_OF_TEXT} token; mhe-edge's tokenizers end documents with it"
        )
    return tokenizer


def load_tokenizer(path: str | os.PathLike) -> TextTokenizer:
    """A `tokenizer.json` (or a folder holding one), size-checked before it is read."""

    path = Path(path)
    if path.is_dir():
        read_tokenizer_config(path)  # what clients read beside it: refused when damaged
        path = path / TOKENIZER_FILE
    if not path.is_file():
        raise CheckpointError(f"no tokenizer at {str(path)!r}")
    size = path.stat().st_size
    if size > MAX_TOKENIZER_BYTES:
        raise CheckpointError(
            f"{path.name} is {size:,} bytes; a tokenizer is at most {MAX_TOKENIZER_BYTES:,}"
        )
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise CheckpointError(f"{path.name} is not a tokenizer.json (not UTF-8 JSON)") from exc
    return tokenizer_from_json(text, path.name)


MAX_TOKENIZER_CONFIG_BYTES = (
    10_000_000  # an honest one is a few kB (a chat template at most ~100 kB)
)
_SIDES = ("left", "right")


def _special_token(
    value,
) -> bool:  # "<s>", null, or {"content": "<s>", ...} as transformers writes it
    return (
        value is None
        or isinstance(value, str)
        or (isinstance(value, dict) and isinstance(value.get("content"), str))
    )


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and value >= 0


# the fields mhe-edge or its clients read, with their kinds; any other field is kept as it is
TOKENIZER_CONFIG_FIELDS: dict[str, tuple[Callable[[Any], bool], str]] = {
    **{
        name: (_special_token, "a token (a string, null or an object with a content string)")
        for name in (
            "bos_token",
            "eos_token",
            "unk_token",
            "pad_token",
            "sep_token",
            "cls_token",
            "mask_token",
        )
    },  # fmt: skip
    **{
        name: (lambda v: isinstance(v, bool), "true or false")
        for name in ("add_bos_token", "add_eos_token", "clean_up_tokenization_spaces", "legacy")
    },
    "model_max_length": (_number, "a non-negative number"),
    "tokenizer_class": (lambda v: isinstance(v, str), "a string"),
    "padding_side": (lambda v: v in _SIDES, '"left" or "right"'),
    "truncation_side": (lambda v: v in _SIDES, '"left" or "right"'),
    "model_input_names": (
        lambda v: isinstance(v, list) and all(isinstance(x, str) for x in v),
        "a list of strings",
    ),
    "chat_template": (
        lambda v: (
            isinstance(v, str) or (isinstance(v, list) and all(isinstance(x, dict) for x in v))
        ),
        "a string or a list of named templates",
    ),
    "added_tokens_decoder": (
        lambda v: isinstance(v, dict) and all(isinstance(x, dict) for x in v.values()),
        "an object of token objects",
    ),
}


def read_tokenizer_config(folder: str | os.PathLike) -> dict[str, Any] | None:
    """A folder's tokenizer_config.json (None when it has none), checked before use: a regular file of
    sane size, a JSON object of bounded nesting, each field above of its kind. A CheckpointError names
    the file and the field."""
    path = Path(folder) / TOKENIZER_CONFIG_FILE
    if not path.exists():
        return None
    where = f"{Path(folder).name}/{TOKENIZER_CONFIG_FILE}"
    if not path.is_file():
        raise CheckpointError(f"{where} is not a regular file")
    if path.stat().st_size > MAX_TOKENIZER_CONFIG_BYTES:
        raise CheckpointError(f"{where} is larger than a tokenizer config can be")
    try:
        text = path.read_bytes().decode("utf-8")
        if _nesting(text) > MAX_CONFIG_NESTING:
            raise CheckpointError(f"{where} nests deeper than {MAX_CONFIG_NESTING} levels")
        settings = json.loads(text)
    except (ValueError, RecursionError) as exc:  # UnicodeDecodeError is a ValueError
        raise CheckpointError(f"{where} is not JSON: {first_line(exc)}") from None
    if not isinstance(settings, dict):
        raise CheckpointError(f"{where} is not a JSON object")
    for field, (ok, wanted) in TOKENIZER_CONFIG_FIELDS.items():
        if settings.get(field) is not None and not ok(settings[field]):  # null: as absent
            raise CheckpointError(f"{where}: field {field}={settings[field]!r:.60} is not {wanted}")
    return settings


MAX_CONFIG_NESTING = 16


def _nesting(text: str) -> int:
    """How deep brackets nest (strings included: an over-estimate is safe), before the parser recurses."""
    depth = deepest = 0
    for ch in text:
        if ch in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif ch in "]}":
            depth -= 1
    return deepest


def has_tokenizer(folder: str | os.PathLike) -> bool:
    return (Path(folder) / TOKENIZER_FILE).is_file()


def tokenizer_of_export(metadata: dict[str, str], name: str) -> TextTokenizer | None:
    """The tokenizer an export carries in its metadata, or None (random-weight models have none)."""
    text = metadata.get(KEY_TOKENIZER)
    if text is None:
        return None
    try:
        return tokenizer_from_json(text, name)
    except CheckpointError as exc:
        raise ModelFileError(str(exc)) from exc
