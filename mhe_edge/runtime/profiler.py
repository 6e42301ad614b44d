"""`profile`: latency, throughput and memory of an export on ONNX Runtime, plus its slowest ops."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import statistics
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mhe_edge import options
from mhe_edge.accounting import kv_cache_bytes
from mhe_edge.contract import KEY_GRAPH
from mhe_edge.errors import RequestError
from mhe_edge.files import check_output, read_header, staged_output
from mhe_edge.options import check_all
from mhe_edge.results import Result
from mhe_edge.runtime.driver import ExportedModel
from mhe_edge.runtime.memory import (
    DevicePeakMemory,
    check_fits,
    peak_rss_bytes,
    read_bandwidth_bytes_per_s,
    reset_peak_rss,
)


@dataclass
class ProfileReport(Result):
    path: str
    provider: str
    providers: list[str]  # what ONNX Runtime actually used, in order
    arch: str
    attention: str
    graph: str | None  # how the file was made: "export", "+optimize(...)"
    batch: int
    seq_len: int  # the prompt, or with past_len the past each decode step starts from
    prefill_chunk: int | None
    new_tokens: int
    runs: int
    latency_ms: dict[
        str, Any
    ]  # load; prefill (decoders) or forward (encoders); decode_per_token: p50/p90/mean/n
    tokens_per_second: float
    peak_memory_bytes: int | None
    peak_memory_source: str
    kv_cache_bytes: int  # the cache at its final length
    model_file_bytes: int
    parameter_bytes: int
    # "in place": one preallocated buffer per layer (GroupQueryAttention); "copied": present -> past
    cache: str = "copied"
    bandwidth_floor: dict[str, Any] | None = (
        None  # decoders on the CPU: the bytes a step must read, at the measured bandwidth
    )
    unstable: list[str] = field(
        default_factory=list
    )  # latencies whose spread ((p90 - min) / median) exceeds 10%
    top_ops: list[dict[str, Any]] = field(default_factory=list)  # by ONNX Runtime's profiler
    past_len: int | None = (
        None  # set: decode timed after a synthetic past of this length, no prefill
    )


UNSTABLE_SPREAD = 0.10


def _percentiles(samples_s: list[float]) -> dict[str, float]:
    """min, median (p50), p90, mean and the spread (p90 - min) / median, in ms."""
    ms = np.array(samples_s) * 1000.0
    median = float(np.percentile(ms, 50))
    p90 = float(np.percentile(ms, 90))
    return {
        "min": float(ms.min()),
        "p50": median,
        "p90": p90,
        "mean": float(ms.mean()),
        "n": len(ms),
        "spread": (p90 - float(ms.min())) / median if median > 0 else 0.0,
    }


def profile(
    path: str | os.PathLike,
    *,
    provider: str = "cpu",
    batch: int = 1,
    seq_len: int | None = None,
    prefill_chunk: int | None = None,
    past_len: int | None = None,
    new_tokens: int = 32,
    runs: int = 5,
    warmup: int = 1,
    threads: int | None = None,
    trace: str | os.PathLike | None = None,
    force: bool = False,
    top_ops: int = 8,
    in_place: bool = True,
    on_progress: Callable[[str, int, int], None] | None = None,
) -> ProfileReport:
    """Profile an export: decoders prefill `seq_len` tokens (in chunks of `prefill_chunk`) then decode
    `new_tokens` one at a time; encoders run one forward pass of `seq_len` tokens (default: 128, or what
    fits the model's max_seq_len). Latencies are min/median/p90 over `runs` runs after `warmup` runs (every
    decode step is a sample), flagged in `unstable` when (p90 - min) / median exceeds 10%; memory is the
    peak from loading the session through the op profile's steps and the measured runs, all on one
    session (what a device must hold). A `--target ort`
    decoder updates its cache in place unless `in_place` is False. On the CPU, decoders also report
    their bandwidth floor: the bytes a decode step must read (every weight, and the cache) at this
    machine's measured bandwidth, and which fraction of it the decode reached.
    With `past_len`, decoders skip the prompt: each run decodes `new_tokens` steps from a cache already
    holding `past_len` positions (seeded values; a step's cost does not depend on them), so the time of
    a step at a long context is measured without a long prefill (latency "prefill" is then None).
    `trace` keeps ONNX Runtime's Chrome trace (a .json file, never over an existing one unless `force`).

    Example: `mhe_edge.profile("model.opt.onnx", seq_len=512, new_tokens=32).latency_ms["decode_per_token"]`
    """
    check_all(
        (options.PROVIDER, provider),
        (options.BATCH, batch),
        (options.SEQ_LEN, seq_len),
        (options.PREFILL_CHUNK, prefill_chunk),
        (options.PAST_LEN, past_len),
        (options.NEW_TOKENS, new_tokens),
        (options.RUNS, runs),
        (options.WARMUP, warmup),
        (options.THREADS, threads),
    )
    if past_len is not None and (seq_len is not None or prefill_chunk is not None):
        raise RequestError(
            "--past-len replaces the prompt: give it without --seq-len and --prefill-chunk"
        )
    if past_len is not None and new_tokens < 1:
        raise RequestError("--past-len times decode steps: give --new-tokens of at least 1")
    if trace is not None:
        check_output(trace, force=force, suffixes=(".json",), inputs=[path])
    # The bandwidth probe allocates about the weights' size: run it before the session exists, so the
    # process never holds both, and leave it out of the peak, which is the session's alone.
    header = read_header(path)
    bandwidth = (
        read_bandwidth_bytes_per_s(_probe_bytes(header.parameter_bytes))
        if provider == "cpu" and header.config.arch == "decoder" and new_tokens > 0
        else None
    )
    del header
    op_profile = top_ops > 0 or trace is not None
    trace_dir = tempfile.TemporaryDirectory() if op_profile else None
    reset_peak_rss()
    start = time.perf_counter()
    # One session for everything: with an op profile wanted, ONNX Runtime's profiler is on from the start,
    # records a few steps first, and is then switched off (end_profiling) before the measured runs, so
    # the process never loads the weights twice and the timings are not the profiler's
    model = ExportedModel(
        path,
        provider,
        threads,
        profile_prefix=str(Path(trace_dir.name) / "ort_profile") if trace_dir else None,
    )
    load_s = time.perf_counter() - start
    cfg = model.config
    is_decoder = cfg.arch == "decoder"
    if past_len is not None and not is_decoder:
        raise RequestError("--past-len is for decoders; this file holds an encoder")
    seq_len = past_len if past_len is not None else seq_len
    if seq_len is None:  # a default that fits the model: 128 tokens, fewer for short contexts
        seq_len = max(1, min(128, cfg.max_seq_len - (new_tokens if is_decoder else 0)))
    model.cache_in_place = model.cache_in_place and in_place
    if seq_len + (new_tokens if is_decoder else 0) > cfg.max_seq_len:
        raise RequestError(
            f"{seq_len} {'past' if past_len is not None else 'prompt'} +"
            f" {new_tokens if is_decoder else 0} new tokens exceed the model's"
            f" max_seq_len {cfg.max_seq_len}"
        )
    width = np.dtype(model.float_dtype).itemsize
    chunk = 1 if past_len is not None else min(seq_len, prefill_chunk or seq_len)
    check_fits(
        {
            "the KV cache": kv_cache_bytes(cfg, batch, seq_len + new_tokens, width)
            if is_decoder
            else 0,
            "one layer's synthetic past": kv_cache_bytes(cfg, batch, seq_len, width) // cfg.n_layers
            if past_len is not None
            else 0,
            "the logits": batch * chunk * cfg.vocab_size * width,
            "the ids": batch * seq_len * 8,
        },
        f"profiling batch {batch} x {seq_len} tokens",
    )
    rng = np.random.default_rng(0)
    ids = rng.integers(0, cfg.vocab_size, (batch, 1 if past_len is not None else seq_len))
    past = None
    if past_len is not None:
        from mhe_edge.runtime.past_cache import cache_with_past, synthetic_past

        layer = synthetic_past(model, batch, past_len)
        past = cache_with_past(model, dict.fromkeys(model.past_names, layer), past_len + new_tokens)
        del layer  # in place, every layer now has its own buffer

    ops: list[dict[str, Any]] = []
    if trace_dir is not None:
        with trace_dir:
            ops = _top_ops(
                model,
                ids,
                prefill_chunk,
                min(new_tokens, 4),
                is_decoder,
                trace,
                force,
                top_ops,
                past,
            )

    prefill_s: list[float] = []
    decode_s: list[float] = []

    def one_run(model: ExportedModel, record: bool) -> None:
        t0 = time.perf_counter()
        if not is_decoder:
            model.encode(ids)
            if record:
                prefill_s.append(time.perf_counter() - t0)
            return
        if past is not None:  # decode from the past each run: in place, its buffers rewound
            if past.in_place:
                past.rewind(seq_len)  # seq_len is past_len here
            cache, token = past, ids
        else:
            last, cache = model.prefill(ids, prefill_chunk, capacity=seq_len + new_tokens)
            if record:
                prefill_s.append(time.perf_counter() - t0)
            token = last.argmax(-1)[:, None]
        for _ in range(new_tokens):
            t1 = time.perf_counter()
            logits, cache = model.step(token, cache)
            token = logits[:, -1:].argmax(-1)
            if record:
                decode_s.append(time.perf_counter() - t1)

    total = warmup + runs
    for i in range(warmup):
        one_run(model, record=False)
        if on_progress:
            on_progress("warm-up", i + 1, total)
    with DevicePeakMemory() if provider == "cuda" else contextlib.nullcontext() as device_memory:
        for i in range(runs):
            one_run(model, record=True)
            if on_progress:
                on_progress("measure", warmup + i + 1, total)
    if device_memory is not None:
        peak = device_memory.peak
        source = (
            "NVML device memory"
            if peak is not None
            else "unavailable: install nvidia-ml-py for GPU memory"
        )
    else:
        peak = peak_rss_bytes()
        source = (
            "process VmHWM (session load and runs)"
            if peak is not None
            else "unavailable: /proc/self/status not readable"
        )

    final_len = seq_len + (new_tokens if is_decoder else 0)
    bytes_per_element = 2 if model.float_dtype == np.float16 else 4
    decode = _percentiles(decode_s) if decode_s else None
    latency = {
        "load": load_s * 1000.0,
        "prefill" if is_decoder else "forward": _percentiles(prefill_s) if prefill_s else None,
        "decode_per_token": decode,
    }
    unstable = [
        name
        for name, stats in latency.items()
        if isinstance(stats, dict) and stats["spread"] > UNSTABLE_SPREAD
    ]
    floor = None
    if decode and bandwidth is not None:
        floor = _bandwidth_floor(
            model.parameter_bytes,
            kv_cache_bytes(cfg, batch, seq_len + new_tokens // 2, bytes_per_element),
            decode["min"],
            bandwidth,
        )
    providers = model.session.get_providers()
    metadata, parameter_bytes, file_size = model.metadata, model.parameter_bytes, model.file_bytes
    cache_in_place = model.cache_in_place
    return ProfileReport(
        path=str(path),
        provider=provider,
        providers=providers,
        arch=cfg.arch,
        attention=cfg.attention,
        graph=metadata.get(KEY_GRAPH),
        batch=batch,
        seq_len=seq_len,
        prefill_chunk=prefill_chunk,
        new_tokens=new_tokens if is_decoder else 0,
        runs=runs,
        latency_ms=latency,
        past_len=past_len,
        tokens_per_second=(batch / (decode["p50"] / 1000.0))
        if decode
        else batch * seq_len / statistics.median(prefill_s),
        peak_memory_bytes=peak,
        peak_memory_source=source,
        kv_cache_bytes=kv_cache_bytes(cfg, batch, final_len, bytes_per_element)
        if is_decoder
        else 0,
        model_file_bytes=file_size,
        parameter_bytes=parameter_bytes,
        cache="in place" if is_decoder and cache_in_place else "copied",
        bandwidth_floor=floor,
        unstable=unstable,
        top_ops=ops,
    )


PROBE_MIN_BYTES, PROBE_MAX_BYTES = 32 << 20, 256 << 20


def _probe_bytes(weight_bytes: int) -> int:
    """The bandwidth probe reads what a decode step reads (the weights), past the caches, at most 256 MiB."""
    return max(PROBE_MIN_BYTES, min(PROBE_MAX_BYTES, weight_bytes))


def _bandwidth_floor(
    weight_bytes: int, cache_bytes: int, decode_min_ms: float, bandwidth: float
) -> dict[str, Any]:
    """The least time a decode step can take on this machine: every weight and the cache (at its mean length
    over the decode) read once, at the measured read `bandwidth` (bytes/s); `fraction` is that floor over
    the fastest step."""
    floor_ms = (weight_bytes + cache_bytes) / bandwidth * 1000.0
    return {
        "bytes_per_step": weight_bytes + cache_bytes,
        "bandwidth_gb_s": bandwidth / 1e9,
        "floor_ms": floor_ms,
        "fraction": floor_ms / decode_min_ms if decode_min_ms > 0 else None,
    }


def _top_ops(
    model: ExportedModel, ids, prefill_chunk, steps, is_decoder, trace, force, limit, past=None
) -> list[dict[str, Any]]:
    """Time by op type from ONNX Runtime's own profiler (on since `model`'s session was created), over one
    prefill (or, given a synthetic `past`, from it) and a few decode steps, with the cache handled as the
    measured runs handle it; then the profiler is switched off, the Chrome trace kept at `trace` if
    given, and the `limit` costliest op types returned."""
    if is_decoder:
        if past is not None:  # the measured runs rewind an in-place past before each use
            cache, token = past, ids
        else:
            last, cache = model.prefill(ids, prefill_chunk, capacity=ids.shape[1] + steps)
            token = last.argmax(-1)[:, None]
        for _ in range(steps):
            logits, cache = model.step(token, cache)
            token = logits[:, -1:].argmax(-1)
        del cache
    else:
        model.encode(ids)
    trace_file = Path(model.session.end_profiling())  # later runs are not profiled
    events = json.loads(trace_file.read_text())
    if trace:
        with staged_output(Path(trace), force=force) as staged:
            shutil.copyfile(trace_file, staged)
    per_op: dict[str, float] = defaultdict(float)
    for event in events:
        if event.get("cat") == "Node" and event.get("name", "").endswith("_kernel_time"):
            per_op[event["args"].get("op_name", "?")] += event.get("dur", 0)
    total = sum(per_op.values()) or 1.0
    ranked = sorted(per_op.items(), key=lambda kv: -kv[1])[:limit]
    return [{"op": op, "ms": us / 1000.0, "share": us / total} for op, us in ranked]
