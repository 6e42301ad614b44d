"""Commands that run ONNX files: `generate`, `profile`, `compare`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from mhe_edge import options
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
    cli_option,
    flag,
)
from mhe_edge.cli.output import comparison_table, emit, err, literal, out
from mhe_edge.errors import RequestError


@command()
def generate(
    model: DecoderModel,
    text: Annotated[
        list[str] | None,
        typer.Option(
            help="A text prompt (repeat for several: they run as one batch). Needs the"
            " tokenizer a trained model's export carries.",
            show_default=False,
        ),
    ] = None,
    prompt: Annotated[
        str | None,
        typer.Option(
            help="Token ids instead of text, comma-separated, e.g. 3,1,4.", show_default=False
        ),
    ] = None,
    max_new_tokens: Annotated[int, cli_option(options.MAX_NEW)] = options.MAX_NEW.default,
    temperature: Annotated[float, cli_option(options.TEMPERATURE)] = options.TEMPERATURE.default,
    top_k: Annotated[int, cli_option(options.TOP_K)] = options.TOP_K.default,
    top_p: Annotated[float, cli_option(options.TOP_P)] = options.TOP_P.default,
    repetition_penalty: Annotated[float, cli_option(options.REPETITION_PENALTY)] = (
        options.REPETITION_PENALTY.default
    ),
    seed: Annotated[int | None, cli_option(options.SEED)] = None,
    stop: Annotated[
        list[str] | None,
        typer.Option(
            help="End a prompt's text before this string (repeatable); EOS always ends it."
        ),
    ] = None,
    provider: Provider = options.PROVIDER.default,
    threads: Threads = None,
    prefill_chunk: PrefillChunk = None,
    as_json: Json = False,
) -> None:
    """Generate with the KV cache: text (`--text`, streamed as it comes) with the tokenizer the export
    carries, or token ids (`--prompt`). `--json` prints the report: the model, the provider and one
    {"prompt", "text", "tokens", "stopped_by"} per prompt under "generations".

    Examples: `mhe-edge generate my-model.onnx --text "The module" --max-new-tokens 40`;
    `mhe-edge generate model.onnx --prompt 3,1,4 --max-new-tokens 8` (prints `tokens:` and the new ids).
    """
    from mhe_edge.runtime.memory import return_large_blocks_to_the_os
    from mhe_edge.text.sampling import SamplingOptions

    return_large_blocks_to_the_os()  # this process only runs a session: freed weights-sized blocks go back
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

    assert text is not None  # either --text or --prompt, checked above
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

    def render(report) -> None:
        if streaming:
            out.print()
            return
        for g in report.generations:
            out.print(f"{literal(g.prompt)}{literal(g.text)}", highlight=False)
            out.print("---", highlight=False)

    emit(report, as_json, render)


@command()
def profile(
    model: OnnxModel,
    provider: Provider = options.PROVIDER.default,
    batch: Batch = options.BATCH.default,
    seq_len: Annotated[int | None, cli_option(options.SEQ_LEN)] = None,
    prefill_chunk: PrefillChunk = None,
    past_len: Annotated[int | None, cli_option(options.PAST_LEN)] = None,
    new_tokens: NewTokens = options.NEW_TOKENS.default,
    runs: Runs = options.RUNS.default,
    warmup: Annotated[int, cli_option(options.WARMUP)] = options.WARMUP.default,
    threads: Threads = None,
    copy_cache: Annotated[
        bool,
        flag(
            "--copy-cache",
            "Feed each present back as the next past even where the cache could be updated in place (--target ort).",
        ),
    ] = False,
    trace: Annotated[
        Path | None, typer.Option(help="Keep ONNX Runtime's Chrome trace here (.json).")
    ] = None,
    force: Force = False,
    as_json: Json = False,
) -> None:
    """Latency (load, prefill, per-token decode: min/median/p90; spreads over 10% flagged), tokens/s, peak
    memory, KV-cache bytes, file size, the bandwidth floor of a decode step (CPU) and the slowest ops by
    ONNX Runtime's own profiler. `--target ort` decoders update their cache in place. `--past-len T`
    times decode steps at context T from a cache already holding T positions, with no T-token prefill.

    Examples: `mhe-edge profile model.opt.onnx --seq-len 512 --new-tokens 32 --json`;
    `mhe-edge profile model.opt.onnx --past-len 16384 --batch 4 --new-tokens 8`
    """
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    from mhe_edge.runtime.memory import return_large_blocks_to_the_os
    from mhe_edge.runtime.profiler import profile as profile_model

    return_large_blocks_to_the_os()  # the peak measured is then the session's, not the heap's leftovers
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
            past_len=past_len,
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
        f" {report.seq_len} tokens{' of synthetic past' if report.past_len else ''})",
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


def _lengths(preset: options.ComparePreset) -> str:
    return " and ".join(str(t) for t in preset.seq_lens)


@command()
def compare(
    files: Annotated[
        list[Path] | None,
        typer.Argument(
            help="Exports (.onnx), checkpoints or model folders (ours or imported) to compare;"
            " none: build them from --preset.",
            show_default=False,
        ),
    ] = None,
    preset: Annotated[str, cli_option(options.PRESET, help="Model size when building.")] = "small",
    arch: Annotated[
        str, cli_option(options.ARCH, help="decoder or encoder, when building.")
    ] = options.ARCH.default,
    attention: Annotated[
        str, typer.Option(help="Kinds to build, comma-separated.")
    ] = "mha,mqa,gqa,mhe-add,mhe-mul",
    provider: Provider = options.PROVIDER.default,
    seq_lens: Annotated[
        str | None,
        typer.Option(
            help="Prompt lengths, comma-separated (default: "
            f"{_lengths(options.COMPARE_DEFAULT)}, those that fit the models;"
            f" {_lengths(options.COMPARE_LONG_CONTEXT)} with --long-context).",
            show_default=False,
        ),
    ] = None,
    batch: Annotated[int | None, cli_option(options.COMPARE_BATCH)] = None,
    new_tokens: Annotated[int | None, cli_option(options.COMPARE_NEW_TOKENS)] = None,
    runs: Annotated[int | None, cli_option(options.COMPARE_RUNS)] = None,
    long_context: Annotated[
        bool,
        flag(
            "--long-context",
            f"Where the KV cache dominates: decode at {_lengths(options.COMPARE_LONG_CONTEXT)} tokens of"
            f" past, batch {options.COMPARE_LONG_CONTEXT.batch},"
            f" {options.COMPARE_LONG_CONTEXT.new_tokens} steps, {options.COMPARE_LONG_CONTEXT.runs}"
            " rounds, each step timed from a synthetic cache of that length (no prefill; built models"
            " get the positions). Explicit --seq-lens, --batch, --new-tokens, --runs override it.",
        ),
    ] = False,
    prefill_chunk: PrefillChunk = None,
    target: Target = "ort",
    threads: Threads = None,
    plot: Annotated[
        Path | None,
        typer.Option(
            help="Write a plot of peak memory and decode time vs length (.png, .svg, .pdf)."
        ),
    ] = None,
    force: Force = False,
    as_json: Json = False,
) -> None:
    """Put MHE beside MHA, MQA and GQA: same-size random-weight models are built, exported and optimized
    (or FILES are taken as they are), each profiled in a fresh process, in interleaved rounds; one table of
    medians with ratios to MHA (* marks a spread over 10% between rounds), with each model's KV cache per
    token and its share of the bytes a decode step reads. By default batch 4 at 512 and 1024 tokens;
    `--long-context` goes where the cache is most of a step (4k and 16k tokens), where MHE's cache,
    n_heads times smaller than MHA's, pays most.

    Examples: `mhe-edge compare --preset small --seq-lens 128,512,2048 --plot compare.png`;
    `mhe-edge compare --long-context --plot long.png`
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
            long_context=long_context,
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
