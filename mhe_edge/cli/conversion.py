"""`convert`: a pretrained MHA/GQA model folder or checkpoint -> an MHE model folder, with the fit per layer."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from mhe_edge import options
from mhe_edge.cli import command
from mhe_edge.cli.options import Force, Json, cli_option
from mhe_edge.cli.output import emit, literal, out, steps


@command()
def convert(
    source: Annotated[
        Path,
        typer.Argument(
            help="An MHA, GQA or MQA model: a folder (ours, or llama, mistral, qwen2, gpt2, bert)"
            " or a .pt/.safetensors checkpoint.",
            show_default=False,
        ),
    ],
    output: Annotated[
        Path,
        typer.Option("-o", "--output", help="The model folder to write.", show_default=False),
    ] = ...,  # type: ignore[assignment]  # typer's mark for a required option
    attention: Annotated[
        str, cli_option(options.CONVERT_ATTENTION)
    ] = options.CONVERT_ATTENTION.default,
    init: Annotated[str, cli_option(options.CONVERT_INIT)] = options.CONVERT_INIT.default,
    text: Annotated[
        list[Path] | None,
        typer.Option(
            help="Score these UTF-8 files before and after (default: the held-out text a trained source records)."
        ),
    ] = None,
    force: Force = False,
    as_json: Json = False,
) -> None:
    """Turn every attention layer of a pretrained model into MHE: one shared Q/K/V projection of one head's
    width plus an embedding per head, fitted to the source's heads (GQA's KV heads expanded first);
    embeddings, norms, MLP, positions and tokenizer are carried over. Prints the relative fit error per layer
    and projection and, when the source has a tokenizer and text, held-out bits per byte before any training.

    Example: `mhe-edge convert my-llama -o my-llama-mhe --attention mhe-mul --init svd`, then
    `mhe-edge export my-llama-mhe --optimize --target ort`.
    """
    from mhe_edge.workflows.convert import convert as convert_model

    with steps("convert", quiet=as_json) as on_step:
        report = convert_model(
            source,
            output,
            attention=attention,
            init=init,
            text=text,
            force=force,
            on_step=on_step,
        )

    def render(report) -> None:
        table = Table(
            title=f"{literal(report.source)} ({report.source_attention}) -> {literal(report.path)}"
            f" ({report.attention}, init {report.init}): relative fit error (mean pooling's)"
        )
        for column in ("layer", "q", "k", "v"):
            table.add_column(column, justify="right")
        for layer in report.layers:
            table.add_row(
                str(layer.layer),
                *(f"{layer.error[p]:.3f} ({layer.mean_error[p]:.3f})" for p in ("q", "k", "v")),
            )
        out.print(table)
        params, cache = report.parameters, report.kv_cache_bytes_per_token
        out.print(
            f"parameters {params['source']:,} -> {params['converted']:,}; KV cache per token"
            f" {cache['source']:,} -> {cache['converted']:,} bytes (fp32)",
            highlight=False,
        )
        held = report.held_out
        if held and "bits_per_byte" in held:
            bigram = held.get("bigram_bits_per_byte")
            out.print(
                f"held-out ({literal(report.held_out_note)}): source {held['source_bits_per_byte']:.3f},"
                f" converted {held['bits_per_byte']:.3f} bits per byte"
                + (f" (bigram {bigram:.3f})" if bigram is not None else ""),
                highlight=False,
            )
        else:
            out.print(literal(report.held_out_note), highlight=False)

    emit(report, as_json, render)
