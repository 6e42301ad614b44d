"""Commands that make and describe models: `init`, `inspect`."""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from mhe_edge.cli import command
from mhe_edge.cli.options import Arch, Attention, Force, Json, Preset
from mhe_edge.cli.output import emit, literal, out, print_description

Size = Annotated[Optional[int], typer.Option(min=1, max=1_000_000)]


@command()
def init(
    output: Annotated[Path, typer.Argument(help="Checkpoint to write: .pt or .safetensors.", show_default=False)],
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
    seed: Annotated[int, typer.Option(min=0, max=2**32 - 1, help="Seed for the random weights.")] = 0,
    force: Force = False,
    as_json: Json = False,
) -> None:
    """Write a seeded random-weight checkpoint.

    Example: `mhe-edge init model.pt --arch decoder --attention mhe-add --preset tiny`
    """
    from mhe_edge.workflows.build import init_model

    report = init_model(
        output, arch=arch, attention=attention, preset=preset, seed=seed, force=force,
        n_layers=layers, d_model=d_model, n_heads=heads, n_kv_heads=kv_heads, head_dim=head_dim,
        d_ff=d_ff, vocab_size=vocab_size, max_seq_len=max_seq_len,
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
    path: Annotated[Path, typer.Argument(help="A checkpoint (.pt, .safetensors) or an ONNX export (.onnx).", show_default=False)],
    as_json: Json = False,
) -> None:
    """Describe a checkpoint or export: config, parameters by component, bytes, KV cache per token; for an
    export also its metadata, opsets and op counts.

    Example: `mhe-edge inspect model.onnx --json`
    """
    from mhe_edge.inspection import describe

    emit(describe(path), as_json, print_description)
