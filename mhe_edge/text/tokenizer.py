"""The tokenizer a model folder carries: Hugging Face `tokenizers` byte-level BPE (or plain bytes) saved as
`tokenizer.json`, the file transformers and onnxruntime-genai read, with `tokenizer_config.json` and
`special_tokens_map.json` beside it. One special token, `<|endoftext|>` (id 0), begins and ends documents,
as in GPT-2; byte-level means any text, in any script, encodes without unknown tokens."""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path

from mhe_edge.contract import KEY_TOKENIZER
from mhe_edge.errors import CheckpointError, ModelFileError, RequestError, first_line
from mhe_edge.options import BPE_VOCAB

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
        self.eos_token_id = backend.token_to_id(END_OF_TEXT)
        self.bos_token_id = self.eos_token_id

    @property
    def vocab_size(self) -> int:
        return self.backend.get_vocab_size(with_added_tokens=True)

    def encode(self, text: str) -> list[int]:
        return self.backend.encode(text, add_special_tokens=False).ids

    def encode_exactly(self, text: str, what: str) -> list[int]:
        """The ids of `text`, or a RequestError when they do not decode back to it (characters the
        tokenizer cannot encode, an unknown-token fallback): scoring or continuing such ids would count
        or answer text that was never seen."""
        ids = self.encode(text)
        back = self.decode(ids)
        if back != text:
            at = next(
                (i for i, (a, b) in enumerate(zip(text, back)) if a != b), min(len(text), len(back))
            )
            shown = repr(text[at]) if at < len(text) else "the end"
            raise RequestError(
                f"{what} does not survive this tokenizer: {shown} at character {at:,} does not encode"
                " (its ids decode to other text)"
            )
        return ids

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
    backend.train_from_iterator(texts, trainer=trainer)
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
