"""Drive any mhe-edge export from its metadata: an encoder forward pass, or decoding with the KV cache.

One code path for every provider: inputs and outputs go through ONNX Runtime's IO binding, so on CUDA the
KV cache stays on the device between steps; only `logits` come back to the host.

The cache is updated in place where the file allows it. A `--target ort` decoder's GroupQueryAttention
takes one preallocated buffer per layer, `[batch, kv_heads, capacity, head_dim]`, bound as both the past
input and the present output: each step writes its new positions into it, and nothing is copied (the
kernel reads the valid lengths from `attention_mask`). Other files return a present one step longer than
their past, which becomes the next past (the whole cache is copied every step).
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mhe_edge import options
from mhe_edge.accounting import kv_cache_bytes
from mhe_edge.contract import (
    ATTENTION_MASK,
    INPUT_IDS,
    KEY_MIN_ORT,
    KEY_PADDING,
    KEY_QUERY_SEQLENS,
    KEY_TARGET,
    LOGITS,
    PAST_PREFIX,
    present_for,
)
from mhe_edge.errors import ModelFileError, RequestError, first_line
from mhe_edge.files import read_header
from mhe_edge.options import check_all
from mhe_edge.results import Result
from mhe_edge.runtime.memory import check_fits
from mhe_edge.sessions import create_session
from mhe_edge.text.sampling import SamplingOptions, TokenPicker


class SessionCache(dict):
    """A decoder's cache in an ONNX Runtime session (the PyTorch models' is
    models.attention.KVCache): OrtValues by past input name, how many positions it holds (`length`), and whether
    they are preallocated buffers updated in place (`capacity` positions each) or replaced every step."""

    def __init__(self, values: dict, length: int = 0, capacity: int | None = None):
        super().__init__(values)
        self.length, self.capacity = length, capacity
        self.binding: Any = None  # in place: (IO binding, logits buffer), reused while the step length stays the same

    @property
    def in_place(self) -> bool:
        return self.capacity is not None

    def rewind(self, length: int) -> None:
        """Forget the positions from `length` on, so decoding resumes there (the next steps overwrite them);
        only preallocated buffers can: a copied cache's tensors are exactly as long as what they hold."""
        if not self.in_place or not 0 <= length <= self.length:
            raise RequestError(f"cannot rewind this cache of {self.length} positions to {length}")
        self.length = length


class ExportedModel:
    """An mhe-edge export loaded on one provider, with its config and I/O layout read from the file."""

    def __init__(
        self,
        path: str | os.PathLike,
        provider: str = "cpu",
        threads: int | None = None,
        profile_prefix: str | None = None,
    ):
        self.path = Path(path)
        header = read_header(self.path)
        self.config, self.metadata = header.config, header.metadata
        check_runtime_version(self.metadata, self.path.name)
        # sizes from the header already parsed; the header itself (the graph's structure) is not
        # needed again, so it is freed before the session loads the weights
        self.parameter_bytes, self.file_bytes = header.parameter_bytes, header.file_bytes
        del header
        self.provider = provider
        self.session = create_session(self.path, provider, threads, profile_prefix)
        self.device = provider  # ORT names devices as we name providers: "cpu", "cuda"
        inputs = {i.name: i for i in self.session.get_inputs()}
        self.float_dtype = (
            np.float16 if any(i.type == "tensor(float16)" for i in inputs.values()) else np.float32
        )
        self.input_names = list(inputs)
        self.output_names = [o.name for o in self.session.get_outputs()]
        self.past_names = [n for n in self.input_names if n.startswith(PAST_PREFIX)]
        # GroupQueryAttention updates a shared past/present buffer in place; it needs the mask for lengths
        self.cache_in_place = (
            self.config.arch == "decoder"
            and self.metadata.get(KEY_TARGET) == "ort"
            and ATTENTION_MASK in self.input_names
        )
        # GroupQueryAttention as lowered keeps each row's tokens first: left padding gives wrong tokens there
        self.right_padding_only = (
            self.metadata.get(KEY_TARGET) == "ort" and self.metadata.get(KEY_PADDING) != "any"
        )

    @contextlib.contextmanager
    def _running(self):
        """ONNX Runtime's run errors (a file whose weights do not fit its graph, say) as one clear line."""
        try:
            yield
        except Exception as exc:  # IO binding raises plain RuntimeError("Error in execution: ...")
            if type(exc).__module__.startswith("onnxruntime") or type(exc) is RuntimeError:
                raise ModelFileError(
                    f"ONNX Runtime failed running {self.path.name}: {first_line(exc)}"
                ) from exc
            raise

    def _require(self, arch: str, what: str) -> None:
        if self.config.arch != arch:
            raise RequestError(
                f"{what} needs a {arch} export; {self.path.name} holds a model with arch {self.config.arch}"
            )

    # --- shared

    def check_ids(self, ids: np.ndarray, new_tokens: int = 0) -> np.ndarray:
        ids = np.asarray(ids)
        if ids.ndim != 2 or ids.shape[0] < 1 or ids.shape[1] < 1:
            raise RequestError(
                f"input ids must be a non-empty (batch, sequence) array, not shape {ids.shape}"
            )
        if not np.issubdtype(ids.dtype, np.integer):
            raise RequestError("input ids must be integers")
        bad = ids[(ids < 0) | (ids >= self.config.vocab_size)]
        if bad.size:
            raise RequestError(
                f"token id {int(bad[0])} is outside the vocabulary [0, {self.config.vocab_size})"
            )
        if new_tokens < 0:
            raise RequestError(f"the number of new tokens must not be negative, not {new_tokens}")
        if ids.shape[1] + new_tokens > self.config.max_seq_len:
            raise RequestError(
                f"{ids.shape[1]} prompt + {new_tokens} new tokens exceed the model's max_seq_len"
                f" {self.config.max_seq_len} (its max_position_embeddings)"
            )
        return ids.astype(np.int64)

    def _ortvalue(self, array: np.ndarray):
        import onnxruntime as ort

        return ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(array), self.device, 0)

    # --- encoders

    def encode(self, ids: np.ndarray, attention_mask: np.ndarray | None = None) -> np.ndarray:
        self._require("encoder", "encoding")
        ids = self.check_ids(ids)
        mask = (
            np.ones_like(ids)
            if attention_mask is None
            else np.asarray(attention_mask, dtype=np.int64)
        )
        if mask.shape != ids.shape:
            raise RequestError(
                f"attention mask shape {mask.shape} does not match the ids' {ids.shape}"
            )
        with self._running():
            return self.session.run(None, {INPUT_IDS: ids, ATTENTION_MASK: mask})[0]

    # --- decoders

    @property
    def takes_mask(self) -> bool:
        """Decoders exported with an attention_mask input (all of them since the mask was added) batch prompts
        of different lengths; older files take equal lengths only."""
        return ATTENTION_MASK in self.input_names

    def empty_cache(
        self, batch: int, capacity: int | None = None, in_place: bool | None = None
    ) -> SessionCache:
        """An empty cache: preallocated buffers of `capacity` positions when the file updates its cache in place
        (and `in_place` is not False), else tensors of length 0 that each step replaces."""
        cfg = self.config
        if capacity is not None and (
            self.cache_in_place if in_place is None else in_place and self.cache_in_place
        ):
            import onnxruntime as ort

            if not 1 <= capacity <= cfg.max_seq_len:
                raise RequestError(
                    f"cache capacity {capacity} is outside [1, max_seq_len {cfg.max_seq_len}]"
                )
            shape = (
                batch,
                cfg.kv_heads,
                capacity,
                cfg.head_dim,
            )  # never read beyond the valid lengths: left uninitialised
            buffers = {
                n: ort.OrtValue.ortvalue_from_shape_and_type(
                    shape, self.float_dtype, self.device, 0
                )
                for n in self.past_names
            }
            return SessionCache(buffers, 0, capacity)
        empty = np.zeros((batch, cfg.kv_heads, 0, cfg.head_dim), self.float_dtype)
        return SessionCache({name: self._ortvalue(empty) for name in self.past_names})

    def step(
        self, ids: np.ndarray, cache: SessionCache, mask: np.ndarray | None = None
    ) -> tuple[np.ndarray, SessionCache]:
        """One decoder call: ids (B, T) int64, the cache and the attention mask over past + new tokens (default:
        all ones) -> logits (B, T, V) and the cache holding T more positions (the same buffers, when in place)."""
        return self._step(ids, cache, mask, None)

    def _step(
        self,
        ids: np.ndarray,
        cache: SessionCache,
        mask: np.ndarray | None,
        positions: np.ndarray | None,
    ) -> tuple[np.ndarray, SessionCache]:
        """`step`; with `positions` (B,), only each row's logits at its position are copied out, (B, V): a
        prompt's (B, T, V) logits are then held once, in the session's output, not copied beside it."""
        total = cache.length + ids.shape[1]
        if cache.in_place and total > cache.capacity:
            raise RequestError(
                f"the cache holds {cache.capacity} positions; this step needs {total}"
            )
        if mask is None and self.takes_mask:
            mask = np.ones((ids.shape[0], total), np.int64)
        self._check_positions(ids, cache, mask, total)
        if cache.in_place:
            return self._step_in_place(ids, cache, mask, total, positions)
        binding = self.session.io_binding()
        binding.bind_ortvalue_input(INPUT_IDS, self._ortvalue(ids.astype(np.int64)))
        if self.takes_mask and mask is not None:  # set above whenever the model takes one
            binding.bind_ortvalue_input(ATTENTION_MASK, self._ortvalue(mask.astype(np.int64)))
        for name in self.past_names:
            binding.bind_ortvalue_input(name, cache[name])
        binding.bind_output(LOGITS, "cpu")  # the host needs them for the next token
        for name in self.past_names:
            binding.bind_output(
                present_for(name), self.device
            )  # the cache stays where the model runs
        with self._running():
            self.session.run_with_iobinding(binding)
        outputs = binding.get_outputs()  # in binding order: logits, then one present per past
        logits = outputs[0].numpy()  # a view of the session's own output
        return _kept(logits, positions, copy=False), SessionCache(
            dict(zip(self.past_names, outputs[1:])), total
        )

    def _check_positions(self, ids: np.ndarray, cache: SessionCache, mask, total: int) -> None:
        """Refuse, before running, a step the file would get wrong: a position past the model's table
        (max_position_embeddings; a learned table would be read out of bounds), or left padding in a file
        whose attention takes right padding only."""
        mask = None if mask is None else np.asarray(mask)
        if mask is not None and mask.shape != (ids.shape[0], total):
            raise RequestError(
                f"attention mask shape {mask.shape} does not match batch {ids.shape[0]} and"
                f" past + new length {total}"
            )
        positions = total if mask is None else int(mask.sum(axis=1).max(initial=0))
        if positions > self.config.max_seq_len:
            raise RequestError(
                f"position {positions - 1} is past the end of the model's position table"
                f" (max_position_embeddings {self.config.max_seq_len}): shorten the prompt or generate fewer tokens"
            )
        if mask is not None and cache.length == 0 and self.right_padding_only:
            if np.any(np.diff(mask.astype(np.int64), axis=1) > 0):  # a 0 before a 1: left padding
                raise RequestError(
                    f"{self.path.name} takes right padding only (a --target ort file's GroupQueryAttention"
                    " keeps each row's tokens first): pad on the right, or use a std or portable file,"
                    " or a package made for a client that pads left (--format transformers-js, optimum)"
                )

    def _step_in_place(
        self,
        ids: np.ndarray,
        cache: SessionCache,
        mask: np.ndarray | None,
        total: int,
        positions: np.ndarray | None,
    ) -> tuple[np.ndarray, SessionCache]:
        """A step on preallocated buffers: the present is the past's own buffer, so the kernel writes the new
        positions into it. The binding (and the logits buffer, per step length) is kept on the cache and
        reused: a decode step rebinds only its ids and mask."""
        binding, logits = (
            cache.binding
            if cache.binding is not None and cache.binding[1].shape()[1] == ids.shape[1]
            else (None, None)
        )
        if binding is None:
            binding = self.session.io_binding()
            for name in self.past_names:
                binding.bind_ortvalue_input(name, cache[name])
                binding.bind_ortvalue_output(present_for(name), cache[name])
            shape = (ids.shape[0], ids.shape[1], self.config.vocab_size)
            import onnxruntime as ort

            logits = ort.OrtValue.ortvalue_from_shape_and_type(
                shape, self.float_dtype, "cpu", 0
            )  # the host reads them
            binding.bind_ortvalue_output(LOGITS, logits)
            cache.binding = (binding, logits)
        feeds = [ids.astype(np.int64)]
        if self.takes_mask and mask is not None:
            feeds.append(mask.astype(np.int64))
        binding.bind_ortvalue_input(INPUT_IDS, self._ortvalue(feeds[0]))
        if self.takes_mask:
            binding.bind_ortvalue_input(ATTENTION_MASK, self._ortvalue(feeds[1]))
        with self._running():
            self.session.run_with_iobinding(binding)
        cache.length = total
        assert logits is not None  # made with the binding, or kept with it
        return _kept(logits.numpy(), positions, copy=True), cache  # the buffer is reused next step

    def prefill(
        self, ids: np.ndarray, chunk: int | None = None, capacity: int | None = None
    ) -> tuple[np.ndarray, SessionCache]:
        """Run the prompt (in chunks of `chunk` tokens, if given); returns the last position's logits and the
        cache, preallocated for `capacity` positions where the file updates it in place."""
        if chunk is not None and chunk < 1:
            raise RequestError(f"prefill chunk must be at least 1, not {chunk}")
        cache = self.empty_cache(ids.shape[0], capacity)
        chunk = chunk or ids.shape[1]
        if (
            ids.shape[0] > 1
            and chunk < ids.shape[1]
            and self.metadata.get(KEY_TARGET) == "ort"
            and self.metadata.get(KEY_QUERY_SEQLENS) != "1"
        ):
            raise RequestError(
                f"{self.path.name} cannot prefill a batch in chunks (GroupQueryAttention needs query_seqlens for that):"
                " prefill whole, use batch 1, or optimize with --ort-query-seqlens (ONNX Runtime 1.32+)"
            )
        last = np.full(ids.shape[0], -1)
        for start in range(0, ids.shape[1], chunk):
            logits, cache = self._step(ids[:, start : start + chunk], cache, None, last)
        return logits, cache

    def generate(
        self, prompt: np.ndarray, max_new_tokens: int, prefill_chunk: int | None = None
    ) -> np.ndarray:
        """Greedy decoding of equal-length prompts: exactly max_new_tokens per row, (B, max_new_tokens)."""
        self._require("decoder", "generation")
        prompt = self.check_ids(prompt, max_new_tokens)
        rows = self.generate_rows(
            prompt.tolist(), max_new_tokens, prefill_chunk=prefill_chunk, stop_at_eos=False
        )
        return np.array(rows, dtype=np.int64).reshape(prompt.shape[0], max_new_tokens)

    def generate_rows(
        self,
        prompts: list[list[int]],
        max_new_tokens: int,
        *,
        sampling: SamplingOptions | None = None,
        prefill_chunk: int | None = None,
        stop_at_eos: bool = True,
        on_tokens: Callable[[np.ndarray], np.ndarray | None] | None = None,
    ) -> list[list[int]]:
        """Prompts of any lengths as one batch; each row's new ids (ending at its EOS, if it emits one).

        Rows are padded on the right, as onnxruntime-genai pads (ONNX Runtime's GroupQueryAttention takes only
        that), with the mask marking the padding; each step appends a 1 to every row's mask. A row's tokens
        equal that prompt generated alone. `on_tokens` sees each step's new ids (B,), for streaming.
        """
        self._require("decoder", "generation")
        lengths = [len(p) for p in prompts]
        width = max(lengths, default=0)
        if not prompts or min(lengths) < 1:
            raise RequestError("every prompt needs at least one token")
        pad = self.config.eos_token_id or 0
        ids = self.check_ids(
            np.array([p + [pad] * (width - len(p)) for p in prompts], dtype=np.int64),
            max_new_tokens,
        )
        item = np.dtype(self.float_dtype).itemsize
        check_fits(
            {
                "the KV cache": kv_cache_bytes(
                    self.config, len(prompts), width + max_new_tokens, item
                ),
                "the logits": len(prompts) * width * self.config.vocab_size * item,
            },
            f"generating {len(prompts)} x {width + max_new_tokens} tokens",
        )
        ragged = min(lengths) != width
        if ragged and not self.takes_mask:
            raise RequestError(
                f"{self.path.name} has no attention_mask input (an older export): give prompts of equal length"
            )
        if ragged and prefill_chunk is not None:
            raise RequestError(
                "--prefill-chunk needs prompts of equal length (padded rows are prefilled whole)"
            )
        if max_new_tokens == 0:
            return [[] for _ in prompts]
        picker = TokenPicker(
            sampling,
            self.config.eos_token_id if stop_at_eos else None,
            len(prompts),
            [list(p) for p in prompts],
        )
        capacity = width + max_new_tokens
        if ragged:
            mask = (np.arange(width)[None, :] < np.array(lengths)[:, None]).astype(np.int64)
            last, cache = self._step(
                ids, self.empty_cache(len(prompts), capacity), mask, np.array(lengths) - 1
            )
        else:
            mask = np.ones_like(ids)
            last, cache = self.prefill(ids, prefill_chunk, capacity)
        steps = []
        while True:
            token = picker.pick(self._finite(last))
            steps.append(token)
            if on_tokens:
                finished = on_tokens(
                    token
                )  # the caller may end rows (a stop string): they emit EOS from now on
                if finished is not None and picker.eos is not None:
                    picker.done |= np.asarray(finished, dtype=bool)
            if len(steps) == max_new_tokens or picker.finished:
                break
            mask = np.concatenate([mask, np.ones((len(prompts), 1), np.int64)], axis=1)
            logits, cache = self.step(token[:, None], cache, mask)
            last = logits[:, -1]
        rows = np.stack(steps, axis=1).tolist()
        eos = self.config.eos_token_id
        if stop_at_eos and eos is not None:
            rows = [row[: row.index(eos) + 1] if eos in row else row for row in rows]
        return rows

    def _finite(self, logits: np.ndarray) -> np.ndarray:
        """NaN or infinite logits mean broken weights, never a silent token."""
        if not np.isfinite(logits).all():
            raise ModelFileError(
                f"{self.path.name} produced NaN or infinite logits; its weights are broken"
            )
        return logits


def parse_prompt(text: str) -> np.ndarray:
    """'3,1,4' -> [[3, 1, 4]]; one clear error for anything that is not comma-separated integers."""
    parts = [p.strip() for p in text.split(",")]
    if not text.strip() or any(not _INTEGER.fullmatch(p) for p in parts):
        raise RequestError(f"prompt must be comma-separated token ids such as 3,1,4, not {text!r}")
    values = [int(p) for p in parts]
    too_big = [v for v in values if not -(2**63) <= v < 2**63]
    if too_big:
        raise RequestError(f"token id {too_big[0]} is outside any vocabulary")
    return np.array([values], dtype=np.int64)


_INTEGER = re.compile(r"-?[0-9]+")


def check_runtime_version(metadata: dict[str, str], name: str) -> None:
    """Refuse, saying what to upgrade, a file that needs a newer ONNX Runtime than the one installed."""
    import onnxruntime as ort
    from packaging.version import InvalidVersion, Version

    needed = metadata.get(KEY_MIN_ORT)
    if needed is None:
        return
    try:
        too_old = Version(ort.__version__) < Version(needed)
    except InvalidVersion as exc:
        raise ModelFileError(
            f"{name} declares an unreadable minimum ONNX Runtime version {needed!r}"
        ) from exc
    if too_old:
        raise ModelFileError(
            f"{name} needs ONNX Runtime >= {needed}, this is {ort.__version__}: upgrade onnxruntime"
            " (or optimize the export with --target portable for older runtimes)"
        )


@dataclass
class GenerateResult(Result):
    model: str
    provider: str
    prompt: list[list[int]]  # (batch, prompt length)
    tokens: list[list[int]]  # the new ids, (batch, max_new_tokens)


def generate(
    model: str | os.PathLike,
    prompt: str | list[int] | list[list[int]] | np.ndarray,
    *,
    max_new_tokens: int = 16,
    provider: str = "cpu",
    threads: int | None = None,
    prefill_chunk: int | None = None,
) -> GenerateResult:
    """Greedy generation with the KV cache from a decoder export.

    Example: `mhe_edge.generate("model.onnx", [3, 1, 4], max_new_tokens=8).tokens[0]`
    (a prompt may also be the CLI's text form, "3,1,4", or a batch of equal-length rows)."""
    check_all(
        (options.MAX_NEW, max_new_tokens),
        (options.PROVIDER, provider),
        (options.THREADS, threads),
        (options.PREFILL_CHUNK, prefill_chunk),
    )
    ids = parse_prompt(prompt) if isinstance(prompt, str) else np.asarray(prompt)
    if ids.ndim == 1:
        ids = ids[None, :]
    runner = ExportedModel(model, provider, threads)
    runner._require("decoder", "generation")
    tokens = runner.generate(ids, max_new_tokens, prefill_chunk)
    return GenerateResult(str(model), provider, ids.tolist(), tokens.tolist())


def _kept(logits: np.ndarray, positions: np.ndarray | None, copy: bool) -> np.ndarray:
    """(B, T, V) logits, or each row's logits at its position (B, V), always a new array when `copy`."""
    if positions is not None:
        return logits[np.arange(logits.shape[0]), positions]  # indexing by arrays copies
    return logits.copy() if copy else logits
