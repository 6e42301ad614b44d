"""Commands that make and describe models: `init`, `inspect`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from mhe_edge import options
from mhe_edge.cli import command
from mhe_edge.cli.options import (
    Arch,
    Attention,
    Bias,
    DFf,
    DModel,
    Force,
    HeadDim,
    Heads,
    Json,
    KvHeads,
    Layers,
    MaxSeqLen,
    Mlp,
    Norm,
    Position,
    Preset,
    RopePairTiedEmbeddings,
    RopeTheta,
    TieEmbeddings,
    cli_option,
    shape_overrides,
)
from mhe_edge.cli.output import emit, literal, out, print_description, print_mobile_coverage


@command()
def init(
    output: Annotated[
        Path,
        typer.Argument(
            help="What to write: a .pt or .safetensors file, or a model folder (a path with no suffix).",
            show_default=False,
        ),
    ],
    arch: Arch = options.ARCH.default,
    attention: Attention = options.ATTENTION.default,
    preset: Preset = options.PRESET.default,
    layers: Layers = None,
    d_model: DModel = None,
    heads: Heads = None,
    kv_heads: KvHeads = None,
    head_dim: HeadDim = None,
    d_ff: DFf = None,
    vocab_size: Annotated[int | None, cli_option(options.VOCAB_SIZE)] = None,
    max_seq_len: MaxSeqLen = None,
    position: Position = None,
    rope_theta: RopeTheta = None,
    norm: Norm = None,
    mlp: Mlp = None,
    tie_embeddings: TieEmbeddings = None,
    bias: Bias = None,
    rope_pair_tied_embeddings: RopePairTiedEmbeddings = None,
    seed: Annotated[int, cli_option(options.WEIGHT_SEED)] = options.WEIGHT_SEED.default,
    force: Force = False,
    as_json: Json = False,
) -> None:
    """Write a seeded random-weight model: a checkpoint file, or a model folder (config.json +
    model.safetensors, the Hugging Face layout) when OUTPUT has no suffix. Unset options keep the preset's.

    Example: `mhe-edge init my-model --attention mhe-mul --position rope --norm rmsnorm --mlp
    swiglu --tie-embeddings --no-bias`
    """
    from mhe_edge.workflows.build import init_model

    report = init_model(
        output,
        arch=arch,
        attention=attention,
        preset=preset,
        seed=seed,
        force=force,
        **shape_overrides(
            layers,
            d_model,
            heads,
            kv_heads,
            head_dim,
            d_ff,
            max_seq_len,
            position,
            rope_theta,
            norm,
            mlp,
            tie_embeddings,
            bias,
            rope_pair_tied_embeddings,
            vocab_size,
        ),
    )

    def render(report) -> None:
        cfg = report.config
        out.print(
            f"wrote {literal(report.path)}: {cfg['arch']} {cfg['attention']}, {cfg['n_layers']} layers, "
            f"d_model {cfg['d_model']}, {cfg['n_heads']} heads, {report.parameters['total']:,} parameters",
            highlight=False,
        )

    emit(report, as_json, render)


@command()
def inspect(
    path: Annotated[
        Path,
        typer.Argument(
            help="A checkpoint (.pt, .safetensors), a model folder or an ONNX export (.onnx).",
            show_default=False,
        ),
    ],
    mobile: Annotated[
        bool,
        typer.Option(
            "--mobile",
            help="For an ONNX file: the share of nodes ONNX Runtime's NNAPI and CoreML providers would take.",
            metavar="",
        ),
    ] = False,
    as_json: Json = False,
) -> None:
    """Describe a checkpoint or export: config, parameters by component, bytes, KV cache per token; for an
    export also its metadata, opsets and op counts.

    Example: `mhe-edge inspect model.onnx --json`
    """
    from mhe_edge.inspection import describe

    def render(description) -> None:
        print_description(description)
        if description.mobile_coverage:
            print_mobile_coverage(description.mobile_coverage)

    emit(describe(path, mobile=mobile), as_json, render)
