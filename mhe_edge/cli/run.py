"""Commands that run ONNX files: `generate`, `profile`, `compare`."""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.table import Table

from mhe_edge.cli import command
from mhe_edge.cli.options import Batch, DecoderModel, Force, Json, NewTokens, OnnxModel, PrefillChunk, Provider, Runs, Target, Threads
from mhe_edge.cli.output import comparison_table, emit, err, literal, out
from mhe_edge.config import PRESETS
from mhe_edge.errors import RequestError


@command()
def generate(
    model: DecoderModel,
    prompt: Annotated[str, typer.Option(help="Comma-separated token ids, e.g. 3,1,4.", show_default=False)],
    max_new_tokens: Annotated[int, typer.Option(min=0, max=1_000_000, help="How many tokens to generate (greedy).")] = 16,
    provider: Provider = "cpu",
    threads: Threads = None,
    prefill_chunk: PrefillChunk = None,
    as_json: Json = False,
) -> None:
    """Greedy generation with the KV cache; prints `tokens:` and the new ids separated by spaces.

    Example: `mhe-edge generate model.onnx --prompt 3,1,4 --max-new-tokens 8`
    """
    from mhe_edge.runtime.driver import generate as generate_tokens

    result = generate_tokens(model, prompt, max_new_tokens=max_new_tokens, provider=provider, threads=threads,
                             prefill_chunk=prefill_chunk)
    emit(result, as_json, lambda r: print("tokens: " + " ".join(str(t) for t in r.tokens[0])))


@command()
def profile(
    model: OnnxModel,
    provider: Provider = "cpu",
    batch: Batch = 1,
    seq_len: Annotated[int, typer.Option(min=1, max=1_048_576, help="Prompt length (decoders) or sequence length (encoders).")] = 128,
    prefill_chunk: PrefillChunk = None,
    new_tokens: NewTokens = 16,
    runs: Runs = 3,
    warmup: Annotated[int, typer.Option(min=0, max=1000, help="Unmeasured runs first.")] = 1,
    threads: Threads = None,
    trace: Annotated[Optional[Path], typer.Option(help="Keep ONNX Runtime's Chrome trace here (.json).")] = None,
    force: Force = False,
    as_json: Json = False,
) -> None:
    """Latency (load, prefill, per-token decode: p50/p90), tokens/s, peak memory, KV-cache bytes, file
    size, and the slowest ops by ONNX Runtime's own profiler.

    Example: `mhe-edge profile model.opt.onnx --seq-len 512 --new-tokens 32 --json`
    """
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    from mhe_edge.runtime.profiler import profile as profile_model

    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), console=err, transient=True, disable=as_json or not err.is_terminal) as bar:
        task = bar.add_task("profile", total=warmup + runs)

        def on_progress(phase: str, done: int, total: int) -> None:
            bar.update(task, completed=done, description=f"profile: {phase}")

        report = profile_model(
            model, provider=provider, batch=batch, seq_len=seq_len, prefill_chunk=prefill_chunk, new_tokens=new_tokens,
            runs=runs, warmup=warmup, threads=threads, trace=trace, force=force, on_progress=on_progress,
        )
    emit(report, as_json, _print_profile)


def _print_profile(report) -> None:
    latency = report.latency_ms
    table = Table(title=f"{literal(report.path)} on {report.provider} ({report.attention} {report.arch}, batch {report.batch},"
                        f" {report.seq_len} tokens)", show_header=False)
    table.add_row("session load", f"{latency['load']:.1f} ms")
    for key in ("prefill", "forward", "decode_per_token"):
        if latency.get(key):
            table.add_row(key.replace("_", " "), f"p50 {latency[key]['p50']:.2f} ms, p90 {latency[key]['p90']:.2f} ms")
    table.add_row("tokens/s", f"{report.tokens_per_second:.1f}")
    peak = report.peak_memory_bytes
    table.add_row("peak memory", f"{peak / 2**20:.1f} MiB ({report.peak_memory_source})" if peak else f"n/a ({report.peak_memory_source})")
    table.add_row("KV cache", f"{report.kv_cache_bytes / 2**20:.2f} MiB")
    table.add_row("model file", f"{report.model_file_bytes / 2**20:.2f} MiB")
    for op in report.top_ops:
        table.add_row(f"op {literal(op['op'])}", f"{op['ms']:.2f} ms ({op['share']:.0%})")
    out.print(table)


@command()
def compare(
    files: Annotated[Optional[list[Path]], typer.Argument(help="Exports (.onnx), checkpoints or model folders (ours or imported) to compare; none: build them from --preset.", show_default=False)] = None,
    preset: Annotated[str, typer.Option(help=f"Model size when building: {', '.join(PRESETS)}.")] = "small",
    arch: Annotated[str, typer.Option(help="decoder or encoder, when building.")] = "decoder",
    attention: Annotated[str, typer.Option(help="Kinds to build, comma-separated.")] = "mha,mqa,gqa,mhe-add,mhe-mul",
    provider: Provider = "cpu",
    seq_lens: Annotated[str, typer.Option(help="Prompt lengths, comma-separated.")] = "128,512",
    batch: Batch = 1,
    new_tokens: NewTokens = 8,
    runs: Runs = 2,
    prefill_chunk: PrefillChunk = None,
    target: Target = "std",
    threads: Threads = None,
    plot: Annotated[Optional[Path], typer.Option(help="Write a plot of peak memory and decode time vs length (.png, .svg, .pdf).")] = None,
    force: Force = False,
    as_json: Json = False,
) -> None:
    """Put MHE beside MHA, MQA and GQA: same-size random-weight models are built, exported and optimized
    (or FILES are taken as they are), each profiled in a fresh process; one table with ratios to MHA.

    Example: `mhe-edge compare --preset small --seq-lens 128,512,2048 --plot compare.png`
    """
    from mhe_edge.workflows.compare import compare as compare_models

    try:
        lengths = [int(t) for t in seq_lens.split(",")]
    except ValueError as exc:
        raise RequestError(f"seq-lens must be comma-separated integers, not {seq_lens!r}") from exc
    with err.status("compare: starting") as status:
        result = compare_models(
            files or (), preset=preset, arch=arch, attentions=[a.strip() for a in attention.split(",")], provider=provider,
            seq_lens=lengths, batch=batch, new_tokens=new_tokens, runs=runs, prefill_chunk=prefill_chunk, target=target,
            threads=threads, plot=plot, force=force, on_progress=lambda message: status.update(f"compare: {literal(message)}"),
        )

    def render(result) -> None:
        out.print(comparison_table(result.to_dict()))
        if result.plot:
            out.print(f"plot: {literal(result.plot)}")

    emit(result, as_json, render)
