"""Commands that make files for apps: `to-ort` (ONNX Runtime mobile) and `package` (onnxruntime-genai)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from mhe_edge import options
from mhe_edge.cli import command
from mhe_edge.cli.options import (
    DecoderModel,
    Force,
    Json,
    OnnxModel,
    OutputFile,
    cli_option,
    flag,
)
from mhe_edge.cli.output import emit, err, literal, out, print_mobile_coverage


@command("to-ort")
def to_ort(
    model: OnnxModel,
    output: OutputFile = None,
    optimization_level: Annotated[
        str, typer.Option(help="basic keeps standard ONNX ops; extended/all add ORT CPU fusions.")
    ] = "basic",
    force: Force = False,
    as_json: Json = False,
) -> None:
    """Convert to the ONNX Runtime mobile format (.ort) and write OUT.required_operators.config for a
    reduced-size ONNX Runtime build (`--include_ops_by_config`); the .ort is checked against the .onnx.

    Example: `mhe-edge to-ort model.opt.onnx -o model.ort`
    """
    from mhe_edge.edge import to_ort as convert

    with err.status("to-ort: converting and checking"):
        report = convert(model, output, optimization_level=optimization_level, force=force)

    def render(report) -> None:
        out.print(
            f"wrote {literal(report.ort)} ({report.ort_bytes:,} bytes) and {literal(report.required_operators_config)}",
            highlight=False,
        )
        for domain, ops in report.required_operators.items():
            out.print(f"  {literal(domain)}: {literal(', '.join(ops))}", highlight=False)
        out.print(f"max |.ort - .onnx| {report.max_abs_diff:.2e}", highlight=False)
        print_mobile_coverage(report.mobile_coverage)

    emit(report, as_json, render)


@command()
def package(
    model: DecoderModel,
    output: Annotated[
        Path, typer.Option("-o", "--output", help="Folder to write.", show_default=False)
    ],
    format: Annotated[
        str, typer.Option("--format", help="genai: a folder onnxruntime-genai loads as it is.")
    ] = "genai",
    target: Annotated[
        str,
        typer.Option(help="optimize target when MODEL is not optimized yet: ort, std or portable."),
    ] = "ort",
    share_buffer: Annotated[
        bool,
        flag(
            "--share-buffer",
            "past_present_share_buffer: update the cache in place (needs --target ort).",
        ),
    ] = False,
    eos_token_id: Annotated[int | None, cli_option(options.EOS_TOKEN_ID)] = None,
    force: Force = False,
    as_json: Json = False,
) -> None:
    """Package an export for onnxruntime-genai: the optimized model and a genai_config.json from the export's
    metadata (layers, heads, KV heads, head size, vocab, context length, I/O names, greedy defaults). With
    onnxruntime-genai installed, its greedy tokens are checked against `mhe-edge generate` first.

    Example: `mhe-edge package model.onnx --format genai -o model-genai/`
    """
    from mhe_edge.workflows.package import package as package_model

    with err.status("package: optimizing, configuring, checking"):
        report = package_model(
            model,
            output,
            format=format,
            target=target,
            share_buffer=share_buffer,
            eos_token_id=eos_token_id,
            force=force,
        )

    def render(report) -> None:
        out.print(
            f"wrote {literal(report.folder)}: model.onnx ({report.model_bytes:,} bytes), genai_config.json"
            f" (target {report.target}, share buffer {report.share_buffer}, eos {report.eos_token_id});"
            f" onnxruntime-genai check: {literal(report.check['status'])}",
            highlight=False,
        )

    emit(report, as_json, render)
