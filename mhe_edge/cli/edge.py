"""Commands that make files for apps: `to-ort` (ONNX Runtime mobile), `package` (onnxruntime-genai,
transformers.js, Optimum) and `fold` (a standard transformers checkpoint with one KV head)."""

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
        str, cli_option(options.ORT_OPTIMIZATION_LEVEL)
    ] = options.ORT_OPTIMIZATION_LEVEL.default,
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
    format: Annotated[str, cli_option(options.PACKAGE_FORMAT)] = options.PACKAGE_FORMAT.default,
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
    precisions: Annotated[str, cli_option(options.PRECISIONS)] = options.PRECISIONS.default,
    force: Force = False,
    as_json: Json = False,
) -> None:
    """Package an export for onnxruntime-genai: the optimized model and a genai_config.json from the export's
    metadata (layers, heads, KV heads, head size, vocab, context length, I/O names, greedy defaults). With
    onnxruntime-genai installed, its greedy tokens are checked against `mhe-edge generate` first.

    For transformers.js and Optimum: config.json as `mhe-edge fold` writes it (model_type gpt_bigcode or
    llama), the dimension and cache names they expect, left padding taken (ort files are rewritten for
    it), each file checked as the client drives it against `mhe-edge generate`.

    Example: `mhe-edge package model.onnx --format genai -o model-genai/`, or
    `mhe-edge package model.onnx --format transformers-js --precisions fp32,int4 -o model-js/`
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
            precisions=precisions,
            force=force,
        )

    def render(report) -> None:
        if format != "genai":
            out.print(
                f"wrote {literal(report.folder)} for {format}: model_type {report.model_type},"
                f" target {report.target}; each file driven as the client drives it equals"
                " mhe-edge generate",
                highlight=False,
            )
            for precision, path in report.files.items():
                batch = report.check[precision]["left_padded_batch"]
                out.print(
                    f"  {precision}: {literal(path)}; left-padded batch {batch}", highlight=False
                )
            return
        out.print(
            f"wrote {literal(report.folder)}: model.onnx ({report.model_bytes:,} bytes), genai_config.json"
            f" (target {report.target}, share buffer {report.share_buffer}, eos {report.eos_token_id});"
            f" onnxruntime-genai check: {literal(report.check['status'])}",
            highlight=False,
        )

    emit(report, as_json, render)


@command()
def fold(
    model: Annotated[
        Path,
        typer.Argument(
            help="A checkpoint (.pt, .safetensors) or model folder.", show_default=False
        ),
    ],
    output: Annotated[
        Path, typer.Option("-o", "--output", help="Folder to write.", show_default=False)
    ],
    force: Force = False,
    as_json: Json = False,
) -> None:
    """Write an MHE model as a standard transformers checkpoint with one KV head, exactly: learned positions,
    LayerNorm and GELU as GPTBigCode (multi_query); RoPE, RMSNorm and SwiGLU as Llama (num_key_value_heads 1).
    Checked in float64 against the MHE model, then in float32 and by greedy tokens in transformers; what no
    family represents exactly (MHE-ADD with RoPE; MHE-MUL with RoPE whose query scale differs within a
    rotation pair) is refused, and nothing is written. The tokenizer and generation config come along.

    Example: `mhe-edge fold my-model -o my-model-mqa/`, then
    `AutoModelForCausalLM.from_pretrained("my-model-mqa")`
    """
    from mhe_edge.workflows.fold import fold as fold_model

    with err.status("fold: folding, checking in float64, float32 and transformers' greedy tokens"):
        report = fold_model(model, output, force=force)

    def render(report) -> None:
        out.print(
            f"wrote {literal(report.folder)}: {literal(report.model_type)} with"
            f" {report.num_key_value_heads} KV head(s) from {report.attention};"
            f" max |logits diff| float64 {report.float64_max_abs_diff:.1e},"
            f" float32 {report.float32_max_abs_diff:.1e}; transformers' greedy tokens equal mhe-edge's",
            highlight=False,
        )

    emit(report, as_json, render)
