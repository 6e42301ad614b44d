"""The `mhe-edge` command line: each command parses options and calls a library function.

Every refusal is an `MheEdgeError`; `main` turns it into one line on stderr and the class's exit code.
Set MHE_EDGE_DEBUG=1 (or pass --debug) to see the traceback instead.
"""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Optional

import typer
from typer.exceptions import TyperException
from rich.table import Table

import mhe_edge
from mhe_edge.config import ARCHS, ATTENTION_KINDS, PRESETS
from mhe_edge.cli_output import comparison_table, err, out, print_optimize, print_report, steps, worst_per_case
from mhe_edge.errors import MheEdgeError, OutputError

app = typer.Typer(
    name="mhe-edge",
    help="Ship MHE-attention transformers to the edge: build, export to ONNX, optimize, run, profile, compare.\n\nStart with `mhe-edge compare` (MHE beside MHA, MQA and GQA on ONNX Runtime).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="markdown",
)


def _version(value: bool) -> None:
    if value:
        print(f"mhe-edge {mhe_edge.__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version."),
    debug: bool = typer.Option(False, "--debug", help="Show tracebacks for errors (also MHE_EDGE_DEBUG=1)."),
) -> None:
    """`--debug` is read by `main` before the app runs (it decides how errors are shown)."""


@app.command()
def init(
    output: Path = typer.Argument(..., help="Checkpoint to write: .pt or .safetensors."),
    arch: str = typer.Option("decoder", help=f"One of: {', '.join(ARCHS)}."),
    attention: str = typer.Option("mhe-mul", help=f"One of: {', '.join(ATTENTION_KINDS)}."),
    preset: str = typer.Option("tiny", help=f"Starting sizes: {', '.join(PRESETS)}."),
    layers: Optional[int] = typer.Option(None, help="Override the number of blocks."),
    d_model: Optional[int] = typer.Option(None, help="Override the model width."),
    heads: Optional[int] = typer.Option(None, help="Override the number of (query) heads."),
    kv_heads: Optional[int] = typer.Option(None, help="KV heads, for gqa."),
    head_dim: Optional[int] = typer.Option(None, help="Head size (default d_model / heads)."),
    d_ff: Optional[int] = typer.Option(None, help="MLP width (default 4 * d_model)."),
    vocab_size: Optional[int] = typer.Option(None, help="Vocabulary size."),
    max_seq_len: Optional[int] = typer.Option(None, help="Longest sequence (positions)."),
    seed: int = typer.Option(0, help="Seed for the random weights."),
    force: bool = typer.Option(False, "--force", help="Overwrite an existing file."),
    as_json: bool = typer.Option(False, "--json", help="Print the result as JSON."),
) -> None:
    """Write a seeded random-weight checkpoint.

    Example: `mhe-edge init model.pt --arch decoder --attention mhe-add --preset tiny`
    """
    from mhe_edge.workflows import init_checkpoint

    report = init_checkpoint(
        output, arch=arch, attention=attention, preset=preset, seed=seed, force=force,
        n_layers=layers, d_model=d_model, n_heads=heads, n_kv_heads=kv_heads, head_dim=head_dim,
        d_ff=d_ff, vocab_size=vocab_size, max_seq_len=max_seq_len,
    )
    if as_json:
        print(json.dumps(report))
    else:
        cfg = report["config"]
        out.print(
            f"wrote {report['path']}: {cfg['arch']} {cfg['attention']}, {cfg['n_layers']} layers, "
            f"d_model {cfg['d_model']}, {cfg['n_heads']} heads, {report['parameters']['total']:,} parameters"
        )


@app.command()
def inspect(
    path: Path = typer.Argument(..., help="A checkpoint (.pt, .safetensors) or an ONNX export (.onnx)."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object instead of tables."),
) -> None:
    """Describe a checkpoint or export: config, parameters by component, bytes, KV cache per token.

    Example: `mhe-edge inspect model.pt --json`
    """
    from mhe_edge.inspection import describe

    report = describe(path)
    if as_json:
        print(json.dumps(report))
        return
    print_report(report)


@app.command()
def export(
    model: Path = typer.Argument(..., help="Checkpoint to export: .pt or .safetensors."),
    output: Optional[Path] = typer.Option(None, "-o", "--output", help="ONNX file to write (default: MODEL with .onnx)."),
    opset: int = typer.Option(23, help="ONNX opset; 23 is the first with the standard Attention op."),
    atol: float = typer.Option(1e-4, help="Largest allowed |ONNX Runtime - PyTorch| on any output."),
    external_data: bool = typer.Option(False, "--external-data", help="Store weights in OUTPUT.data (automatic past 2 GB)."),
    optimize: bool = typer.Option(False, "--optimize", help="Then run `mhe-edge optimize` on it (writes OUTPUT.opt.onnx)."),
    target: str = typer.Option("std", help="With --optimize: std (ONNX Attention) or ort (GroupQueryAttention)."),
    force: bool = typer.Option(False, "--force", help="Overwrite an existing output."),
    as_json: bool = typer.Option(False, "--json", help="Print the report as one JSON object."),
) -> None:
    """Export a checkpoint to ONNX: MHE layers become one fused `mhe_edge.MHEAttention` node each (an ONNX
    function any runtime can run), MHA/MQA/GQA the standard `Attention` op; decoders get KV-cache inputs and
    outputs. The file is checked (full ONNX check, ONNX Runtime vs PyTorch) before it appears.

    Example: `mhe-edge export model.pt -o model.onnx`
    """
    from mhe_edge.exporters import export as export_model

    with steps("export", quiet=as_json) as on_step:
        report = export_model(model, output, opset=opset, atol=atol, external_data=external_data, force=force, on_step=on_step)
    optimized = None
    if optimize:
        from mhe_edge.passes import optimize as optimize_model

        with steps("optimize", quiet=as_json) as on_step:
            optimized = optimize_model(report.path, target=target, force=force, on_step=on_step)
    if as_json:
        print(json.dumps({**report.to_dict(), "optimized": optimized.to_dict() if optimized else None}))
        return
    table = Table(title=f"exported {report.path}")
    for column in ("case", "output", "max abs diff", "max rel diff", "dtype"):
        table.add_column(column)
    for record in worst_per_case(report.parity):
        table.add_row(record.case, record.output, f"{record.max_abs_diff:.2e}", f"{record.max_rel_diff:.2e}", record.dtype)
    out.print(table)
    fused = {k: v for k, v in report.op_counts.items() if k.endswith("Attention")}
    out.print(
        f"{report.file_bytes:,} bytes, opset {report.opset}, fused attention {fused}, "
        f"max |ORT - PyTorch| {report.max_abs_diff:.2e} (atol {atol:g}), {sum(report.seconds.values()):.1f} s"
    )
    if optimized:
        print_optimize(optimized)


@app.command()
def optimize(
    model: Path = typer.Argument(..., help="An mhe-edge export (.onnx)."),
    output: Optional[Path] = typer.Option(None, "-o", "--output", help="Where to write (default: MODEL.opt.onnx)."),
    target: str = typer.Option("std", help="std: one standard Attention per layer; ort: com.microsoft.GroupQueryAttention."),
    fp16: bool = typer.Option(False, "--fp16", help="Weights, compute, cache and logits in float16 (input_ids stay int64)."),
    int8: bool = typer.Option(False, "--int8", help="Dynamic int8 quantization of MatMul weights (ONNX Runtime's)."),
    force: bool = typer.Option(False, "--force", help="Overwrite an existing output."),
    as_json: bool = typer.Option(False, "--json", help="Print the report as one JSON object."),
) -> None:
    """Fold MHE head embeddings into constants and lower attention to fused single-KV-head kernels, then
    clean up; optionally fp16 or int8. The result is compared with the input on ONNX Runtime before it is
    written (fp32 within 1e-4; fp16 within 1e-2 and the same argmax on 99% of positions).

    Example: `mhe-edge optimize model.onnx -o model.opt.onnx --target ort`
    """
    from mhe_edge.passes import optimize as optimize_model

    with steps("optimize", quiet=as_json) as on_step:
        report = optimize_model(model, output, target=target, fp16=fp16, int8=int8, force=force, on_step=on_step)
    if as_json:
        print(json.dumps(report.to_dict()))
        return
    print_optimize(report)


@app.command()
def generate(
    model: Path = typer.Argument(..., help="A decoder export (.onnx)."),
    prompt: str = typer.Option(..., help="Comma-separated token ids, e.g. 3,1,4."),
    max_new_tokens: int = typer.Option(16, help="How many tokens to generate (greedy)."),
    provider: str = typer.Option("cpu", help="cpu or cuda (refused, never silently replaced, if unavailable)."),
    threads: Optional[int] = typer.Option(None, help="ONNX Runtime intra-op threads."),
    prefill_chunk: Optional[int] = typer.Option(None, help="Feed the prompt in chunks of this many tokens."),
) -> None:
    """Greedy generation with the KV cache; prints `tokens:` and the new ids separated by spaces.

    Example: `mhe-edge generate model.onnx --prompt 3,1,4 --max-new-tokens 8`
    """
    from mhe_edge.errors import RequestError
    from mhe_edge.runtime import ExportedModel, parse_prompt

    ids = parse_prompt(prompt)
    runner = ExportedModel(model, provider, threads)
    if runner.config.arch != "decoder":
        raise RequestError(f"{model.name} is an encoder; generate needs a decoder export")
    tokens = runner.generate(ids, max_new_tokens, prefill_chunk)
    print("tokens: " + " ".join(str(int(t)) for t in tokens[0]))


@app.command()
def profile(
    model: Path = typer.Argument(..., help="An mhe-edge export (.onnx)."),
    provider: str = typer.Option("cpu", help="cpu or cuda."),
    batch: int = typer.Option(1, help="Sequences per call."),
    seq_len: int = typer.Option(128, help="Prompt length (decoders) or sequence length (encoders)."),
    prefill_chunk: Optional[int] = typer.Option(None, help="Prefill in chunks of this many tokens."),
    new_tokens: int = typer.Option(16, help="Decode steps after the prefill (decoders)."),
    runs: int = typer.Option(3, help="Measured runs."),
    warmup: int = typer.Option(1, help="Unmeasured runs first."),
    threads: Optional[int] = typer.Option(None, help="ONNX Runtime intra-op threads."),
    trace: Optional[Path] = typer.Option(None, help="Keep ONNX Runtime's Chrome trace here."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object."),
) -> None:
    """Latency (load, prefill, per-token decode: p50/p90), tokens/s, peak memory, KV-cache bytes, file
    size, and the slowest ops by ONNX Runtime's own profiler.

    Example: `mhe-edge profile model.opt.onnx --seq-len 512 --new-tokens 32 --json`
    """
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    from mhe_edge.runtime.profiler import profile as profile_model

    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), console=err, transient=True, disable=as_json) as bar:
        task = bar.add_task("profile", total=warmup + runs)

        def on_progress(phase: str, done: int, total: int) -> None:
            bar.update(task, completed=done, description=f"profile: {phase}")

        report = profile_model(
            model, provider, batch=batch, seq_len=seq_len, prefill_chunk=prefill_chunk, new_tokens=new_tokens,
            runs=runs, warmup=warmup, threads=threads, trace=trace, on_progress=on_progress,
        )
    if as_json:
        print(json.dumps(report))
        return
    latency = report["latency_ms"]
    table = Table(title=f"{report['path']} on {report['provider']} ({report['attention']} {report['arch']}, batch {batch}, {seq_len} tokens)", show_header=False)
    table.add_row("session load", f"{latency['load']:.1f} ms")
    for key in ("prefill", "forward", "decode_per_token"):
        if latency.get(key):
            table.add_row(key.replace("_", " "), f"p50 {latency[key]['p50']:.2f} ms, p90 {latency[key]['p90']:.2f} ms")
    table.add_row("tokens/s", f"{report['tokens_per_second']:.1f}")
    peak = report["peak_memory_bytes"]
    table.add_row("peak memory", f"{peak / 2**20:.1f} MiB ({report['peak_memory_source']})" if peak else "n/a")
    table.add_row("KV cache", f"{report['kv_cache_bytes'] / 2**20:.2f} MiB")
    table.add_row("model file", f"{report['model_file_bytes'] / 2**20:.2f} MiB")
    for op in report["top_ops"]:
        table.add_row(f"op {op['op']}", f"{op['ms']:.2f} ms ({op['share']:.0%})")
    out.print(table)


@app.command()
def compare(
    files: Optional[list[Path]] = typer.Argument(None, help="Exports to compare; none: build them from --preset."),
    preset: str = typer.Option("small", help=f"Model size when building: {', '.join(PRESETS)}."),
    arch: str = typer.Option("decoder", help="decoder or encoder, when building."),
    attention: str = typer.Option("mha,mqa,gqa,mhe-add,mhe-mul", help="Kinds to build, comma-separated."),
    provider: str = typer.Option("cpu", help="cpu or cuda."),
    seq_lens: str = typer.Option("128,512", help="Prompt lengths, comma-separated."),
    batch: int = typer.Option(1, help="Sequences per call."),
    new_tokens: int = typer.Option(8, help="Decode steps measured after each prefill."),
    runs: int = typer.Option(2, help="Measured runs per point."),
    prefill_chunk: Optional[int] = typer.Option(None, help="Prefill in chunks of this many tokens."),
    target: str = typer.Option("std", help="optimize target for built models: std or ort."),
    threads: Optional[int] = typer.Option(None, help="ONNX Runtime intra-op threads."),
    plot: Optional[Path] = typer.Option(None, help="Write a PNG of peak memory and decode time vs length."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object."),
) -> None:
    """Put MHE beside MHA, MQA and GQA: same-size random-weight models are built, exported and optimized
    (or FILES are taken as they are), each profiled in its own process; one table with ratios to MHA.

    Example: `mhe-edge compare --preset small --seq-lens 128,512,2048 --plot compare.png`
    """
    from mhe_edge.errors import RequestError
    from mhe_edge.runtime.compare import compare as compare_models

    try:
        lengths = [int(t) for t in seq_lens.split(",")]
    except ValueError:
        raise RequestError(f"seq-lens must be comma-separated integers, not {seq_lens!r}") from None
    with err.status("compare: starting") as status:
        result = compare_models(
            files or (), preset=preset, arch=arch, attentions=[a.strip() for a in attention.split(",")], provider=provider,
            seq_lens=lengths, batch=batch, new_tokens=new_tokens, runs=runs, prefill_chunk=prefill_chunk, target=target,
            threads=threads, plot=plot, on_progress=lambda message: status.update(f"compare: {message}"),
        )
    if as_json:
        print(json.dumps(result))
        return
    out.print(comparison_table(result))
    if plot:
        out.print(f"plot: {plot}")


@app.command("to-ort")
def to_ort(
    model: Path = typer.Argument(..., help="An mhe-edge export (.onnx), ideally optimized with --target std."),
    output: Optional[Path] = typer.Option(None, "-o", "--output", help="Where to write (default: MODEL with .ort)."),
    optimization_level: str = typer.Option("basic", help="basic keeps standard ONNX ops; extended/all add ORT CPU fusions."),
    force: bool = typer.Option(False, "--force", help="Overwrite existing outputs."),
    as_json: bool = typer.Option(False, "--json", help="Print the report as one JSON object."),
) -> None:
    """Convert to the ONNX Runtime mobile format (.ort) and write OUT.required_operators.config for a
    reduced-size ONNX Runtime build (`--include_ops_by_config`); the .ort is checked against the .onnx.

    Example: `mhe-edge to-ort model.opt.onnx -o model.ort`
    """
    from mhe_edge.edge import to_ort as convert

    with err.status("to-ort: converting and checking"):
        report = convert(model, output, optimization_level=optimization_level, force=force)
    if as_json:
        print(json.dumps(report))
        return
    out.print(f"wrote {report['ort']} ({report['ort_bytes']:,} bytes) and {report['required_operators_config']}")
    for domain, ops in report["required_operators"].items():
        out.print(f"  {domain}: {', '.join(ops)}")
    out.print(f"max |.ort - .onnx| {report['max_abs_diff']:.2e}")


@app.command()
def package(
    model: Path = typer.Argument(..., help="A decoder export (.onnx)."),
    output: Path = typer.Option(..., "-o", "--output", help="Folder to write."),
    format: str = typer.Option("genai", "--format", help="genai: a folder onnxruntime-genai loads as it is."),
    target: str = typer.Option("ort", help="optimize target when MODEL is not optimized yet: ort or std."),
    share_buffer: bool = typer.Option(False, "--share-buffer", help="past_present_share_buffer: update the cache in place (needs --target ort)."),
    eos_token_id: Optional[int] = typer.Option(None, help="End-of-sequence id for the generator (default: vocab_size - 1)."),
    force: bool = typer.Option(False, "--force", help="Replace an existing folder."),
    as_json: bool = typer.Option(False, "--json", help="Print the report as one JSON object."),
) -> None:
    """Package an export for onnxruntime-genai: the optimized model and a genai_config.json from the export's
    metadata (layers, heads, KV heads, head size, vocab, context length, I/O names, greedy defaults). With
    onnxruntime-genai installed, its greedy tokens are checked against `mhe-edge generate` first.

    Example: `mhe-edge package model.onnx --format genai -o model-genai/`
    """
    from mhe_edge.edge import package_genai
    from mhe_edge.errors import RequestError

    if format != "genai":
        raise RequestError(f"format must be genai, not {format!r}")
    with err.status("package: optimizing, configuring, checking"):
        report = package_genai(model, output, target=target, share_buffer=share_buffer, eos_token_id=eos_token_id, force=force)
    if as_json:
        print(json.dumps(report))
        return
    out.print(f"wrote {report['folder']}: model.onnx ({report['model_bytes']:,} bytes), genai_config.json"
              f" (share buffer {report['share_buffer']}, eos {report['eos_token_id']}); onnxruntime-genai check: {report['check']['status']}")


def main(argv: list[str] | None = None) -> None:
    """Entry point: run the app, map mhe-edge errors to one line and their exit code."""
    debug = "--debug" in (argv if argv is not None else sys.argv[1:]) or os.environ.get("MHE_EDGE_DEBUG") == "1"
    try:
        code = app(args=argv, standalone_mode=False)
    except MheEdgeError as exc:
        if debug:
            raise
        err.print(f"[bold red]error:[/] {exc}", highlight=False, soft_wrap=True)
        sys.exit(exc.exit_code)
    except TyperException as exc:  # usage errors: unknown option, missing argument, bad value
        show = getattr(exc, "show", None)
        show() if show else err.print(f"error: {exc}", highlight=False)
        sys.exit(exc.exit_code)
    except OSError as exc:  # disk full, permissions: the staged outputs were already removed
        if debug:
            raise
        where = f": {exc.filename}" if exc.filename else ""
        err.print(f"[bold red]error:[/] cannot complete the operation ({exc.strerror or exc}){where}; nothing was written",
                  highlight=False, soft_wrap=True)
        sys.exit(OutputError.exit_code)
    except (typer.Abort, KeyboardInterrupt):
        err.print("interrupted; nothing was written", highlight=False)
        sys.exit(130)
    if code == 130:  # typer turns Ctrl-C into exit code 130; staged outputs were removed on the way out
        err.print("interrupted; nothing was written", highlight=False)
    sys.exit(code if isinstance(code, int) else 0)
