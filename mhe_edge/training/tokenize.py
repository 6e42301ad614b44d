"""`tokenize`: text files of any size -> a folder of token shards that `train` reads memory-mapped."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mhe_edge.errors import RequestError
from mhe_edge.files import check_output, staged_output
from mhe_edge.results import Result
from mhe_edge.text.shards import DEFAULT_SHARD_TOKENS, text_pieces, tokenize_files


@dataclass
class TokenizeReport(Result):
    path: str
    documents: int
    bytes: int
    train_tokens: int
    held_out_tokens: int
    dtype: str  # uint16 or uint32
    shards: int
    tokenizer: dict[str, Any] = field(default_factory=dict)  # sha256, vocab_size, eos_token_id


def tokenize(
    text_files: Sequence[str | os.PathLike],
    output: str | os.PathLike,
    *,
    tokenizer: str = "bytes",
    vocab_size: int | None = None,
    shard_tokens: int = DEFAULT_SHARD_TOKENS,
    force: bool = False,
    on_progress: Callable[[int, int], None] | None = None,
) -> TokenizeReport:
    """Tokenize UTF-8 files into `output`, a shards folder (see mhe_edge.text.shards), streamed: memory
    stays bounded by one piece of text and one shard, whatever the files' sizes.

    `tokenizer`: "bytes", "bpe" (byte-level BPE of `vocab_size` learned from the files' training parts,
    streamed too; default the tiny preset's vocabulary), a tokenizer.json or a folder holding one (a
    trained run's). The folder appears whole when done (with `force` replacing an earlier one only then).

    Example: `mhe_edge.tokenize(["big.txt"], "big-shards", tokenizer="my-run")`, then
    `mhe_edge.train("run", ["big-shards"])`.
    """
    from mhe_edge.text.shards import held_out_start
    from mhe_edge.text.tokenizer import byte_tokenizer, load_tokenizer, train_bpe

    paths = [Path(p) for p in text_files]
    if not paths:
        raise RequestError("give the text files to tokenize")
    inputs = [*paths] + ([] if tokenizer in ("bytes", "bpe") else [Path(tokenizer)])
    target = check_output(output, force=force, folder=True, inputs=inputs)
    if tokenizer == "bytes":
        text_tokenizer = byte_tokenizer()
    elif tokenizer == "bpe":
        for path in paths:
            if not path.is_file():
                raise RequestError(f"text file {str(path)!r} does not exist or is not a file")
        pieces = (piece for p in paths for piece in text_pieces(p, 0, held_out_start(p)))
        from mhe_edge.config import preset_config

        text_tokenizer = train_bpe(pieces, vocab_size or preset_config("tiny").vocab_size)
    else:
        text_tokenizer = load_tokenizer(tokenizer)
    with staged_output(target, force=force, folder=True) as stage:
        index = tokenize_files(paths, stage, text_tokenizer, shard_tokens, on_progress)
    return TokenizeReport(
        str(target),
        len(index["documents"]),
        sum(d["bytes"] for d in index["documents"]),
        index["train_tokens"],
        index["held_out_tokens"],
        index["dtype"],
        len(index["shards"]),
        index["tokenizer"],
    )
