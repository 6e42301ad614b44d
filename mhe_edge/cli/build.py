"""Commands that make and describe models: `init`, `inspect`."""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from mhe_edge.cli import command
from mhe_edge.cli.options import Arch, Attention, Force, Json, Preset
from mhe_edge.cli.output import emit, literal, out, print_description, print_mobile_coverage

Size = Annotated[Optional[int], typer.Option(min=1, max=1_000_000)]


@command()
def init(
    output: Annotated[Path, typer.Argument(help="What to write: a .pt or .safetensors file, or a model folder (a path with no suffix).", show_default=False)],
    arch: Arch = "decoder",
    attention: Attention = "mhe-mul",
    preset: Preset = "tiny",
    layers: Annotated[Optional[int], typer.Option(min=1, max=1024, help="Override the number of blocks.")] = None,
    d_model: Annotated[Optional[int], typer.Option(min=1, max=65_536, help="Override the model width.")] = None,
    heads: Annotated[Optional[int], typer.Option(min=1, max=1024, help="Override the number of (query) heads.")] = None,
    kv_heads: Annotated[Optional[int], typer.Option(min=1, max=1024, help="KV heads, for gqa.")] = None,
    head_dim: Annotated[Optional[int], typer.Option(min=1, max=4096, help="Head size (default d_model / heads).")] = None,
    d_ff: Annotated[Optional[int], typer.Option(min=1, max=262_144, help="MLP width (default 4 * d_model).")] = None,
    vocab_size: Annotated[Optional[int], typer.Option(min=1, max=1_000_000, help="Vocabulary size.")] = None,
    max_seq_len: Annotated[Optional[int], typer.Option(min=1, max=1_048_576, help="Longest sequence (positions).")] = None,
    position: Annotated[Optional[str], typer.Option(help="learned (a table of positions) or rope (rotary).")] = None,
    rope_theta: Annotated[Optional[float], typer.Option(min=1.0, max=1e12, help="RoPE's base, with --position rope.")] = None,
    norm: Annotated[Optional[str], typer.Option(help="layernorm or rmsnorm.")] = None,
    mlp: Annotated[Optional[str], typer.Option(help="gelu, gelu_tanh or swiglu.")] = None,
    tie_embeddings: Annotated[Optional[bool], typer.Option("--tie-embeddings/--no-tie-embeddings", help="The output projection reuses the token embeddings (decoders).", metavar="", show_default=False)] = None,
    bias: Annotated[Optional[bool], typer.Option("--bias/--no-bias", help="Biases on the attention and MLP projections.", metavar="", show_default=False)] = None,
    seed: Annotated[int, typer.Option(min=0, max=2**32 - 1, help="Seed for the random weights.")] = 0,
    force: Force = False,
    as_json: Json = False,
) -> None:
    """Write a seeded random-weight model: a checkpoint file, or a model folder (config.json +
    model.safetensors, the Hugging Face layout) when OUTPUT has no suffix. Unset options keep the preset's.

    Example: `mhe-edge init my-model --attention mhe-mul --position rope --norm rmsnorm --mlp swiglu --tie-embeddings --no-bias`
    """
    from mhe_edge.workflows.build import init_model

    report = init_model(
        output, arch=arch, attention=attention, preset=preset, seed=seed, force=force,
        n_layers=layers, d_model=d_model, n_heads=heads, n_kv_heads=kv_heads, head_dim=head_dim,
        d_ff=d_ff, vocab_size=vocab_size, max_seq_len=max_seq_len, position=position, rope_theta=rope_theta, norm=norm,
        mlp=mlp, tie_embeddings=tie_embeddings, qkv_bias=bias, out_bias=bias, mlp_bias=bias,
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
    path: Annotated[Path, typer.Argument(help="A checkpoint (.pt, .safetensors), a model folder or an ONNX export (.onnx).", show_default=False)],
    mobile: Annotated[bool, typer.Option("--mobile", help="For an ONNX file: the share of nodes ONNX Runtime's NNAPI and CoreML providers would take.", metavar="")] = False,
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
