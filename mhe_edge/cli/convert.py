"""Commands that make ONNX files: `export` (optionally then optimize) and `optimize`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from mhe_edge import options
from mhe_edge.cli import command
from mhe_edge.cli.options import Force, Json, OnnxModel, OutputFile, cli_option, flag
from mhe_edge.cli.output import emit, literal, out, print_optimize, steps, worst_per_case
from mhe_edge.files import EXTERNAL_DATA_THRESHOLD_TEXT


@command()
def export(
    model: Annotated[
        Path,
        typer.Argument(
            help="What to export: a .pt or .safetensors checkpoint, or a model folder (ours, or"
            " llama, mistral, qwen2, gpt2, bert from transformers).",
            show_default=False,
        ),
    ],
    output: OutputFile = None,
    opset: Annotated[int, cli_option(options.OPSET)] = options.OPSET.default,
    atol: Annotated[float, cli_option(options.ATOL)] = options.ATOL.default,
    rtol: Annotated[float, cli_option(options.RTOL)] = options.RTOL.default,
    external_data: Annotated[
        bool,
        flag(
            "--external-data",
            f"Store weights in OUTPUT.data (automatic past {EXTERNAL_DATA_THRESHOLD_TEXT}).",
        ),
    ] = False,
    optimize: Annotated[
        bool, flag("--optimize", "Then run `mhe-edge optimize` on it (writes OUTPUT.opt.onnx).")
    ] = False,
    target: Annotated[
        str | None, typer.Option(help="With --optimize: std, ort or portable (default std).")
    ] = None,
    ort_query_seqlens: Annotated[
        bool,
        flag(
            "--ort-query-seqlens",
            "With --optimize --target ort: batched chunked prefill with a past (ONNX Runtime 1.32+).",
        ),
    ] = False,
    force: Force = False,
    as_json: Json = False,
) -> None:
    """Export a checkpoint to ONNX: MHE layers become one fused `mhe_edge.MHEAttentionAdd` or
    `MHEAttentionMul` node each (an ONNX
    function any runtime can run), MHA/MQA/GQA the standard `Attention` op; decoders get KV-cache inputs and
    outputs. The file is checked (full ONNX check, ONNX Runtime vs PyTorch) before it appears.

    Example: `mhe-edge export my-llama-folder -o model.onnx --optimize --target ort`
    """
    from mhe_edge.workflows.build import export_and_optimize

    with steps("export", quiet=as_json) as on_step:
        result = export_and_optimize(
            model,
            output,
            opset=opset,
            atol=atol,
            rtol=rtol,
            external_data=external_data,
            optimize=optimize,
            target=target,
            ort_query_seqlens=ort_query_seqlens,
            force=force,
            on_step=on_step,
            on_optimize_step=lambda name: on_step(f"optimize: {name}"),
        )

    def render(result) -> None:
        report = result.exported
        table = Table(title=f"exported {literal(report.path)}")
        for column in ("case", "output", "max abs diff", "max rel diff", "dtype"):
            table.add_column(column)
        for record in worst_per_case(report.parity):
            table.add_row(
                record.case,
                record.output,
                f"{record.max_abs_diff:.2e}",
                f"{record.max_rel_diff:.2e}",
                record.dtype,
            )
        out.print(table)
        fused = {k: v for k, v in report.op_counts.items() if "Attention" in k}
        out.print(
            f"{report.file_bytes:,} bytes, opset {report.opset}, fused attention {fused}, "
            f"max |ORT - PyTorch| {report.max_abs_diff:.2e} (atol {atol:g}, rtol {rtol:g}), "
            f"{sum(report.seconds.values()):.1f} s",
            highlight=False,
            markup=False,
        )
        if result.optimized:
            print_optimize(result.optimized)

    emit(result, as_json, render)


@command()
def optimize(
    model: OnnxModel,
    output: OutputFile = None,
    target: Annotated[
        str,
        cli_option(
            options.TARGET,
            help="std: one standard Attention per layer (opset 23, ORT 1.23+); ort: GroupQueryAttention"
            " (opset 21, ORT 1.20+); portable: basic ops only (opset 17, IR 8: ORT 1.16+, onnxruntime-node,"
            " OpenVINO).",
        ),
    ] = options.TARGET.default,
    opset: Annotated[int | None, cli_option(options.TARGET_OPSET)] = None,
    ort_query_seqlens: Annotated[
        bool,
        flag(
            "--ort-query-seqlens",
            "With --target ort: batched chunked prefill with a past (needs ONNX Runtime 1.32+).",
        ),
    ] = False,
    fp16: Annotated[
        bool,
        flag("--fp16", "Weights, compute, cache and logits in float16 (input_ids stay int64)."),
    ] = False,
    int8: Annotated[
        bool, flag("--int8", "Dynamic int8 quantization of MatMul weights (ONNX Runtime's).")
    ] = False,
    int4: Annotated[
        bool,
        flag(
            "--int4", "Weight-only 4-bit MatMul weights (ONNX Runtime's MatMulNBits; std or ort)."
        ),
    ] = False,
    int4_block_size: Annotated[
        int, cli_option(options.INT4_BLOCK_SIZE)
    ] = options.INT4_BLOCK_SIZE.default,
    int4_asymmetric: Annotated[
        bool,
        flag("--int4-asymmetric", "With --int4: a zero point per block too (default symmetric)."),
    ] = False,
    int4_accuracy_level: Annotated[
        int, cli_option(options.INT4_ACCURACY_LEVEL)
    ] = options.INT4_ACCURACY_LEVEL.default,
    int4_algorithm: Annotated[
        str, cli_option(options.INT4_ALGORITHM)
    ] = options.INT4_ALGORITHM.default,
    int4_calibration_text: Annotated[
        list[Path] | None,
        typer.Option(help="With --int4-algorithm gptq: text files to calibrate on."),
    ] = None,
    int4_share_tied_table: Annotated[
        bool, cli_option(options.INT4_SHARE_TIED_TABLE)
    ] = options.INT4_SHARE_TIED_TABLE.default,
    atol: Annotated[float, cli_option(options.ATOL)] = options.ATOL.default,
    rtol: Annotated[float, cli_option(options.RTOL)] = options.RTOL.default,
    eval_text: Annotated[
        list[Path] | None,
        typer.Option(
            help="Judge --fp16/--int8/--int4 on these text files (default: the held-out text a trained model records)."
        ),
    ] = None,
    max_quality_loss: Annotated[float | None, cli_option(options.MAX_QUALITY_LOSS)] = None,
    allow_quality_loss: Annotated[
        bool,
        flag(
            "--allow-quality-loss",
            "Write the file even beyond the threshold (the loss is still reported).",
        ),
    ] = False,
    force: Force = False,
    as_json: Json = False,
) -> None:
    """Fold MHE head embeddings into constants and lower attention to fused single-KV-head kernels, then
    clean up; optionally fp16, int8 or int4. The result is compared with the input on ONNX Runtime before
    it is written: fp32 within --atol + --rtol x each output's largest magnitude; fp16, int8 and int4 by
    bits per byte on held-out text for a trained model (refused beyond a threshold), by closeness alone
    (fp16) for random weights, whose quality cannot be judged.

    Example: `mhe-edge optimize model.onnx -o model.portable.onnx --target portable`
    """
    from mhe_edge.passes import optimize as optimize_model

    with steps("optimize", quiet=as_json) as on_step:
        report = optimize_model(
            model,
            output,
            target=target,
            fp16=fp16,
            int8=int8,
            int4=int4,
            int4_block_size=int4_block_size,
            int4_symmetric=not int4_asymmetric,
            int4_accuracy_level=int4_accuracy_level,
            int4_algorithm=int4_algorithm,
            int4_calibration_text=int4_calibration_text,
            int4_share_tied_table=int4_share_tied_table,
            atol=atol,
            rtol=rtol,
            opset=opset,
            ort_query_seqlens=ort_query_seqlens,
            force=force,
            eval_text=eval_text,
            max_quality_loss=max_quality_loss,
            allow_quality_loss=allow_quality_loss,
            on_step=on_step,
        )
    emit(report, as_json, print_optimize)
