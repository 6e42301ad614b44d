"""Commands that run ONNX files: `generate`, `profile`, `compare`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.table import Table

from mhe_edge.cli import command
from mhe_edge.cli.options import (
    Batch,
    DecoderModel,
    Force,
    Json,
    NewTokens,
    OnnxModel,
    PrefillChunk,
    Provider,
    Runs,
    Target,
    Threads,
    flag,
)
from mhe_edge.cli.output import comparison_table, emit, err, literal, out
from mhe_edge.config import PRESETS
from mhe_edge.errors import RequestError


@command()
def generate(
    model: DecoderModel,
    text: Annotated[
        Optional[list[str]],
        typer.Option(
            help="A text prompt (repeat for several: they run as one batch). Needs the tokenizer a trained model's export carries.",
            show_default=False,
        ),
    ] = None,
    prompt: Annotated[
        Optional[str],
        typer.Option(
            help="Token ids instead of text, comma-separated, e.g. 3,1,4.", show_default=False
        ),
    ] = None,
    max_new_tokens: Annotated[
        int, typer.Option(min=0, max=1_000_000, help="At most this many new tokens per prompt.")
    ] = 64,
    temperature: Annotated[
        float,
        typer.Option(
            min=0.0,
            max=100.0,
            help="0: greedy; otherwise sample from softmax(logits / temperature).",
        ),
    ] = 0.0,
    top_k: Annotated[
        int,
        typer.Option(min=0, max=10_000_000, help="Sample among the k likeliest tokens (0: all)."),
    ] = 0,
    top_p: Annotated[
        float,
        typer.Option(
            min=0.0001,
            max=1.0,
            help="Sample among the likeliest tokens whose probabilities sum to p.",
        ),
    ] = 1.0,
    repetition_penalty: Annotated[
        float, typer.Option(min=0.01, max=100.0, help="Above 1 discourages tokens already seen.")
    ] = 1.0,
    seed: Annotated[
        Optional[int],
        typer.Option(
            min=0, max=2**63 - 1, help="Seed the sampler: the same seed gives the same text."
        ),
    ] = None,
    stop: Annotated[
        Optional[list[str]],
        typer.Option(
            help="End a prompt's text before this string (repeatable); EOS always ends it."
        ),
    ] = None,
    provider: Provider = "cpu",
    threads: Threads = None,
    prefill_chunk: PrefillChunk = None,
    as_json: Json = False,
) -> None:
    """Generate with the KV cache: text (`--text`, streamed as it comes) with the tokenizer the export
    carries, or token ids (`--prompt`). `--json` prints {"text", "tokens"} per prompt (a list for several).

    Examples: `mhe-edge generate my-model.onnx --text "The module" --max-new-tokens 40`;
    `mhe-edge generate model.onnx --prompt 3,1,4 --max-new-tokens 8` (prints `tokens:` and the new ids).
    """
    import json

    from mhe_edge.text.sampling import SamplingOptions

    if (text is None) == (prompt is None):
        raise RequestError("give either --text (one or more) or --prompt ids")
    sampling = SamplingOptions(temperature, top_k, top_p, repetition_penalty, seed)
    if prompt is not None:
        from mhe_edge.runtime.driver import generate as generate_tokens

        if not sampling.greedy or stop:
            raise RequestError(
                "--prompt ids are decoded greedily with no stop strings; sample with --text"
            )
        result = generate_tokens(
            model,
            prompt,
            max_new_tokens=max_new_tokens,
            provider=provider,
            threads=threads,
            prefill_chunk=prefill_chunk,
        )
        emit(result, as_json, lambda r: print("tokens: " + " ".join(str(t) for t in r.tokens[0])))
        return
    if prefill_chunk is not None:
        raise RequestError("--prefill-chunk is for --prompt ids (text prompts are prefilled whole)")
    from mhe_edge.runtime.text_generation import generate_text

    streaming = len(text) == 1 and not as_json
    if streaming:
        out.print(literal(text[0]), end="", highlight=False, soft_wrap=True)
    report = generate_text(
        model,
        text,
        max_new_tokens=max_new_tokens,
        sampling=sampling,
        stop=stop,
        provider=provider,
        threads=threads,
        on_text=(
            lambda row, delta: out.print(
                delta, end="", markup=False, highlight=False, soft_wrap=True
            )
        )
        if streaming
        else None,
    )
    if as_json:
        items = [g.to_dict() for g in report.generations]
        print(json.dumps(items[0] if len(items) == 1 else items, allow_nan=False))
    elif streaming:
        out.print()
    else:
        for g in report.generations:
            out.print(f"{literal(g.prompt)}{literal(g.text)}", highlight=False)
            out.print("---", highlight=False)


@command()
def profile(
    model: OnnxModel,
    provider: Provider = "cpu",
    batch: Batch = 1,
    seq_len: Annotated[
        Optional[int],
        typer.Option(
            min=1,
            max=1_048_576,
            help="Prompt length (decoders) or sequence length (encoders); default 128, or what fits the model.",
        ),
    ] = None,
    prefill_chunk: PrefillChunk = None,
    new_tokens: NewTokens = 32,
    runs: Runs = 5,
    warmup: Annotated[int, typer.Option(min=0, max=1000, help="Unmeasured runs first.")] = 1,
    threads: Threads = None,
    copy_cache: Annotated[
        bool,
        flag(
            "--copy-cache",
            "Feed each present back as the next past even where the cache could be updated in place (--target ort).",
        ),
    ] = False,
    trace: Annotated[
        Optional[Path], typer.Option(help="Keep ONNX Runtime's Chrome trace here (.json).")
    ] = None,
    force: Force = False,
    as_json: Json = False,
) -> None:
    """Latency (load, prefill, per-token decode: min/median/p90; spreads over 10% flagged), tokens/s, peak
    memory, KV-cache bytes, file size, the bandwidth floor of a decode step (CPU) and the slowest ops by
    ONNX Runtime's own profiler. `--target ort` decoders update their cache in place.

    Example: `mhe-edge profile model.opt.onnx --seq-len 512 --new-tokens 32 --json`
    """
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    from mhe_edge.runtime.profiler import profile as profile_model

    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        console=err,
        transient=True,
        disable=as_json or not err.is_terminal,
    ) as bar:
        task = bar.add_task("profile", total=warmup + runs)

        def on_progress(phase: str, done: int, total: int) -> None:
            bar.update(task, completed=done, description=f"profile: {phase}")

        report = profile_model(
            model,
            provider=provider,
            batch=batch,
            seq_len=seq_len,
            prefill_chunk=prefill_chunk,
            new_tokens=new_tokens,
            runs=runs,
            warmup=warmup,
            threads=threads,
            trace=trace,
            force=force,
            in_place=not copy_cache,
            on_progress=on_progress,
        )
    emit(report, as_json, _print_profile)


def _print_profile(report) -> None:
    latency = report.latency_ms
    table = Table(
        title=f"{literal(report.path)} on {report.provider} ({report.attention} {report.arch}, batch {report.batch},"
        f" {report.seq_len} tokens)",
        show_header=False,
    )
    table.add_row("session load", f"{latency['load']:.1f} ms")
    for key in ("prefill", "forward", "decode_per_token"):
        if latency.get(key):
            stats = latency[key]
            flag_text = (
                f" (spread {stats['spread']:.0%}: unstable)" if key in report.unstable else ""
            )
            table.add_row(
                key.replace("_", " "),
                f"min {stats['min']:.2f}, median {stats['p50']:.2f}, p90 {stats['p90']:.2f} ms"
                f" over {stats['n']}{flag_text}",
            )
    if report.arch == "decoder":
        table.add_row("KV cache update", report.cache)
    if report.bandwidth_floor:
        floor = report.bandwidth_floor
        table.add_row(
            "bandwidth floor",
            f"{floor['floor_ms']:.2f} ms/step ({floor['bytes_per_step'] / 2**20:.1f} MiB at"
            f" {floor['bandwidth_gb_s']:.1f} GB/s): the fastest step reached {floor['fraction']:.0%} of it",
        )
    table.add_row("tokens/s", f"{report.tokens_per_second:.1f}")
    peak = report.peak_memory_bytes
    table.add_row(
        "peak memory",
        f"{peak / 2**20:.1f} MiB ({report.peak_memory_source})"
        if peak
        else f"n/a ({report.peak_memory_source})",
    )
    table.add_row("KV cache", f"{report.kv_cache_bytes / 2**20:.2f} MiB")
    table.add_row("model file", f"{report.model_file_bytes / 2**20:.2f} MiB")
    for op in report.top_ops:
        table.add_row(f"op {literal(op['op'])}", f"{op['ms']:.2f} ms ({op['share']:.0%})")
    out.print(table)


@command()
def compare(
    files: Annotated[
        Optional[list[Path]],
        typer.Argument(
            help="Exports (.onnx), checkpoints or model folders (ours or imported) to compare; none: build them from --preset.",
            show_default=False,
        ),
    ] = None,
    preset: Annotated[
        str, typer.Option(help=f"Model size when building: {', '.join(PRESETS)}.")
    ] = "small",
    arch: Annotated[str, typer.Option(help="decoder or encoder, when building.")] = "decoder",
    attention: Annotated[
        str, typer.Option(help="Kinds to build, comma-separated.")
    ] = "mha,mqa,gqa,mhe-add,mhe-mul",
    provider: Provider = "cpu",
    seq_lens: Annotated[
        Optional[str],
        typer.Option(
            help="Prompt lengths, comma-separated (default: 128 and 512, those that fit the models).",
            show_default=False,
        ),
    ] = None,
    batch: Batch = 1,
    new_tokens: NewTokens = 32,
    runs: Annotated[
        int,
        typer.Option(
            min=1, max=10_000, help="Interleaved rounds: every model is profiled once per round."
        ),
    ] = 5,
    prefill_chunk: PrefillChunk = None,
    target: Target = "ort",
    threads: Threads = None,
    plot: Annotated[
        Optional[Path],
        typer.Option(
            help="Write a plot of peak memory and decode time vs length (.png, .svg, .pdf)."
        ),
    ] = None,
    force: Force = False,
    as_json: Json = False,
) -> None:
    """Put MHE beside MHA, MQA and GQA: same-size random-weight models are built, exported and optimized
    (or FILES are taken as they are), each profiled in a fresh process, in interleaved rounds; one table of
    medians with ratios to MHA (* marks a spread over 10% between rounds).

    Example: `mhe-edge compare --preset small --seq-lens 128,512,2048 --plot compare.png`
    """
    from mhe_edge.workflows.compare import compare as compare_models

    try:
        lengths = [int(t) for t in seq_lens.split(",")] if seq_lens is not None else None
    except ValueError as exc:
        raise RequestError(f"seq-lens must be comma-separated integers, not {seq_lens!r}") from exc
    with err.status("compare: starting") as status:
        result = compare_models(
            files or (),
            preset=preset,
            arch=arch,
            attentions=[a.strip() for a in attention.split(",")],
            provider=provider,
            seq_lens=lengths,
            batch=batch,
            new_tokens=new_tokens,
            runs=runs,
            prefill_chunk=prefill_chunk,
            target=target,
            threads=threads,
            plot=plot,
            force=force,
            on_progress=lambda message: status.update(f"compare: {literal(message)}"),
        )

    def render(result) -> None:
        out.print(comparison_table(result.to_dict()))
        if result.plot:
            out.print(f"plot: {literal(result.plot)}")

    emit(result, as_json, render)
