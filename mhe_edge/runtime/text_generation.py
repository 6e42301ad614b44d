"""Text in, text out: `generate` with the tokenizer an export carries, several prompts as one batch,
greedy or sampled, stopping at EOS or at stop strings, streaming each prompt's new text as it comes."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from mhe_edge import options
from mhe_edge.errors import RequestError
from mhe_edge.options import check_all
from mhe_edge.results import Result
from mhe_edge.text.sampling import SamplingOptions

MAX_PROMPT_CHARS = 10_000_000


@dataclass
class TextGeneration(Result):
    prompt: str
    text: str  # the new text (ending before a stop string, if one was met)
    tokens: list[int]  # the new ids (the EOS included when the model emitted it)
    stopped_by: str  # "eos", "stop" (a stop string), or "length"


@dataclass
class TextGenerationReport(Result):
    model: str
    provider: str
    generations: list[TextGeneration] = field(default_factory=list)


class _StreamedText:
    """Each row's text so far, released only up to complete characters (byte-level tokens can split one)."""

    def __init__(self, tokenizer, rows: int):
        self.tokenizer = tokenizer
        self.ids: list[list[int]] = [[] for _ in range(rows)]
        self.shown = ["" for _ in range(rows)]

    def add(self, row: int, token: int) -> str:
        self.ids[row].append(token)
        text = self.tokenizer.decode(self.ids[row])
        if text.endswith("\ufffd"):  # an incomplete UTF-8 sequence: wait for its next byte
            return ""
        delta, self.shown[row] = text[len(self.shown[row]) :], text
        return delta


def generate_text(
    model: str | os.PathLike,
    text: str | list[str],
    *,
    max_new_tokens: int = 64,
    sampling: SamplingOptions | None = None,
    stop: list[str] | None = None,
    provider: str = "cpu",
    threads: int | None = None,
    on_text: Callable[[int, str], None] | None = None,
) -> TextGenerationReport:
    """Continue each prompt with the tokenizer the export carries; prompts of any lengths run as one batch.

    `on_text(row, new_text)` streams. A row ends at EOS, at one of `stop` (the text ends before it), or after
    `max_new_tokens`. Example: `mhe_edge.generate_text("model.onnx", "def ", max_new_tokens=32).generations[0].text`
    """
    from mhe_edge.runtime.driver import ExportedModel
    from mhe_edge.text.tokenizer import tokenizer_of_export

    check_all(
        (options.MAX_NEW, max_new_tokens), (options.PROVIDER, provider), (options.THREADS, threads)
    )
    prompts = [text] if isinstance(text, str) else list(text)
    if not prompts or any(not isinstance(p, str) or not p for p in prompts):
        raise RequestError("give at least one non-empty text prompt")
    if sum(map(len, prompts)) > MAX_PROMPT_CHARS:
        raise RequestError(f"the prompts hold more than {MAX_PROMPT_CHARS:,} characters")
    stops = [s for s in (stop or []) if s]
    runner = ExportedModel(model, provider, threads)
    runner._require("decoder", "generation")
    tokenizer = tokenizer_of_export(runner.metadata, runner.path.name)
    if tokenizer is None:
        raise RequestError(
            f"{runner.path.name} carries no tokenizer (a random-weight model, or exported from a"
            " checkpoint file): give --prompt ids, or export a model folder that has tokenizer.json"
        )
    for number, prompt in enumerate(prompts, 1):
        try:
            prompt.encode("utf-8")
        except UnicodeEncodeError as exc:  # bytes that were not UTF-8 on the command line
            raise RequestError(f"prompt {number} is not UTF-8 text") from exc
    # a prompt the tokenizer cannot encode would be continued as other text than the one given
    ids = [tokenizer.encode_exactly(p, f"prompt {n}") for n, p in enumerate(prompts, 1)]
    if any(not row for row in ids):
        raise RequestError("a prompt encodes to no tokens")
    streamed = _StreamedText(tokenizer, len(prompts))
    stopped = np.zeros(len(prompts), dtype=bool)
    reason = ["length"] * len(prompts)

    def on_tokens(step: np.ndarray) -> np.ndarray:
        for row, token in enumerate(step.tolist()):
            if stopped[row]:
                continue
            if token == tokenizer.eos_token_id:
                stopped[row], reason[row] = True, "eos"
                continue
            delta = streamed.add(row, token)
            shown = streamed.shown[row]
            hit = min((shown.find(s) for s in stops if s in shown), default=-1)
            if hit >= 0:
                stopped[row], reason[row] = True, "stop"
                before = len(shown) - len(delta)
                delta = shown[before:hit] if hit > before else ""
            if delta and on_text:
                on_text(row, delta)
        return stopped.copy()

    rows = runner.generate_rows(ids, max_new_tokens, sampling=sampling, on_tokens=on_tokens)
    generations = []
    for row, (prompt, new) in enumerate(zip(prompts, rows)):
        text_out = streamed.shown[row]
        if reason[row] == "stop":
            text_out = text_out[: min(text_out.find(s) for s in stops if s in text_out)]
        generations.append(TextGeneration(prompt, text_out, new, reason[row]))
    return TextGenerationReport(str(model), provider, generations)
