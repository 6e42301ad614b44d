"""Long text in bounded pieces whose ids, joined, are exactly the ids of the whole text.

The tokenizers library holds a few hundred bytes per id while it encodes, so one 20 MB line encoded whole
costs gigabytes. Byte-level BPE (mhe-edge's tokenizers, GPT-2's) splits text into words with GPT-2's
pattern before any merge, and no word runs from a non-space character into a space: a cut just before
such a space changes no id. A piece with no such place (a long run without spaces, as in Chinese) is cut
at the start of the last word the tokenizer's own pre-tokenizer finds in it; a single word longer than
MAX_WORD_CHARS is cut at a character (its ids still decode to exactly the text; only that word's split
into ids may differ from an unchunked encoding). A cut never falls inside <|endoftext|>. Tokenizers that
normalize text or split it another way are encoded whole.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator

PIECE_CHARS = 1 << 16  # text per piece
BATCH_CHARS = 1 << 17  # pieces encoded together (tokenizers holds ~300 bytes per id of a batch)
MAX_WORD_CHARS = 1 << 20  # a longer run without a word boundary is cut at a character
SPECIAL = "<|endoftext|>"
# Unicode White_Space, what the pattern's \s means (str.isspace also counts \x1c-\x1f, which it does not)
WHITE_SPACE = frozenset(
    "\t\n\x0b\x0c\r \x85\xa0\u1680\u2028\u2029\u202f\u205f\u3000"
    + "".join(map(chr, range(0x2000, 0x200B)))
)


def splits_exactly(tokenizer_json: str) -> tuple[bool, bool]:
    """(whether text may be cut into pieces for this tokenizer, whether it has merges): only byte-level
    pre-tokenization with GPT-2's pattern and no normalizer keeps ids unchanged across a cut."""
    spec = json.loads(tokenizer_json)
    pre = spec.get("pre_tokenizer") or {}
    exact = (
        spec.get("normalizer") is None
        and pre.get("type") == "ByteLevel"
        and pre.get("use_regex", True)
    )
    model = spec.get("model") or {}
    return exact, bool(model.get("merges")) or model.get("type") != "BPE"


_SPACE_AFTER_WORD = re.compile(f"[^{''.join(sorted(WHITE_SPACE))}][{''.join(sorted(WHITE_SPACE))}]")


def cut_before_space(text: str, start: int, end: int) -> int:
    """The last place in (start, end) where a whitespace character follows a non-space one; 0 if none."""
    for low in (max(start, end - 4096), start):  # nearly always near the end
        starts = [m.start() for m in _SPACE_AFTER_WORD.finditer(text, low, end)]
        if starts:
            return starts[-1] + 1
    return 0


def pieces(text: str, backend, merges: bool) -> Iterator[str]:
    """`text` in pieces of about PIECE_CHARS (see the module's rules); `backend` finds word starts."""
    start = 0
    while len(text) - start > PIECE_CHARS:
        end, cut = start + PIECE_CHARS, 0
        while not cut:
            cut = cut_before_space(text, start, end)
            if not cut and backend.pre_tokenizer is not None:
                words = backend.pre_tokenizer.pre_tokenize_str(text[start:end])
                cut = start + words[-1][1][0] if len(words) > 1 else 0
            if not cut and (not merges or end - start >= MAX_WORD_CHARS or end >= len(text)):
                cut = end  # no word boundary: any character will do (or must)
            end = min(len(text), start + 2 * (end - start))
        cut = _outside_special(text, start, cut)
        yield text[start:cut]
        start = cut
    if start < len(text):
        yield text[start:]


def _outside_special(text: str, start: int, cut: int) -> int:
    """`cut`, moved back to the start of a <|endoftext|> it would fall inside."""
    at = text.rfind(SPECIAL, max(start, cut - len(SPECIAL) + 1), cut + len(SPECIAL) - 1)
    return at if start < at < cut else cut


def batches(text_pieces: Iterator[str]) -> Iterator[list[str]]:
    """Pieces gathered into lists of about BATCH_CHARS."""
    batch, size = [], 0
    for piece in text_pieces:
        batch.append(piece)
        size += len(piece)
        if size >= BATCH_CHARS:
            yield batch
            batch, size = [], 0
    if batch:
        yield batch
