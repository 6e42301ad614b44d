"""The CLI's side of the options: typer options built from `mhe_edge.options` (where each bounded option's
default, bounds and help are declared once), plus flags and paths that several commands share.

`cli_option(OPTION)` checks a value while typer parses it, with the same `Option.check` the Python API
calls: a bad value is the same RequestError (exit 2) with the same message either way. Flags carry
`metavar=""` so `--help` shows `--force`, not `--force <bool>`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from mhe_edge import options
from mhe_edge.options import Option


def flag(name: str, help: str) -> typer.models.OptionInfo:
    return typer.Option(name, help=help, metavar="")


def cli_option(option: Option, *names: str, help: str | None = None) -> Any:
    """The typer option for `option`: its flag, its help with its bounds, its value checked while parsing.
    Use as `batch: Annotated[int, cli_option(BATCH)] = BATCH.default`: bounds and default stay declared once
    (the type is the one Python and typer read; `Optional[...]` where the option has no default)."""
    bounds = option.bounds_text()
    text = (help or option.help) + (f" [{bounds}]" if bounds else "")
    if option.type is bool:  # a flag and its negation: `--fsdp/--no-fsdp`, no `<bool>` value
        on = names[0] if names else option.flag
        return typer.Option(
            f"{on}/--no-{on.removeprefix('--')}",
            help=text,
            callback=option.check,
            metavar="",
            show_default=False,
        )
    return typer.Option(*(names or (option.flag,)), help=text, callback=option.check)


Force = Annotated[
    bool, flag("--force", "Replace an existing output (only what mhe-edge wrote, for folders).")
]
Json = Annotated[
    bool,
    flag("--json", "Print one JSON object (the Python API's `to_dict()`), nothing else on stdout."),
]
OutputFile = Annotated[
    Path | None, typer.Option("-o", "--output", help="Where to write (default: beside MODEL).")
]
OnnxModel = Annotated[Path, typer.Argument(help="An mhe-edge export (.onnx).", show_default=False)]
DecoderModel = Annotated[Path, typer.Argument(help="A decoder export (.onnx).", show_default=False)]
Provider = Annotated[str, cli_option(options.PROVIDER)]
Threads = Annotated[int | None, cli_option(options.THREADS)]
PrefillChunk = Annotated[int | None, cli_option(options.PREFILL_CHUNK)]
Batch = Annotated[int, cli_option(options.BATCH)]
Runs = Annotated[int, cli_option(options.RUNS)]
NewTokens = Annotated[int, cli_option(options.NEW_TOKENS)]
Target = Annotated[str, cli_option(options.TARGET)]
Arch = Annotated[str, cli_option(options.ARCH)]
Preset = Annotated[str, cli_option(options.PRESET)]
Attention = Annotated[str, cli_option(options.ATTENTION)]

# The model's shape: `init` and `train` take the same options (unset ones keep the preset's).
Layers = Annotated[int | None, cli_option(options.LAYERS)]
DModel = Annotated[int | None, cli_option(options.D_MODEL)]
Heads = Annotated[int | None, cli_option(options.HEADS)]
KvHeads = Annotated[int | None, cli_option(options.KV_HEADS)]
HeadDim = Annotated[int | None, cli_option(options.HEAD_DIM)]
DFf = Annotated[int | None, cli_option(options.D_FF)]
MaxSeqLen = Annotated[int | None, cli_option(options.MAX_SEQ_LEN_OPTION)]
Position = Annotated[str | None, cli_option(options.POSITION)]
RopeTheta = Annotated[float | None, cli_option(options.ROPE_THETA)]
Norm = Annotated[str | None, cli_option(options.NORM)]
Mlp = Annotated[str | None, cli_option(options.MLP)]
TieEmbeddings = Annotated[
    bool | None,
    typer.Option(
        "--tie-embeddings/--no-tie-embeddings",
        help="The output projection reuses the token embeddings (decoders).",
        metavar="",
        show_default=False,
    ),
]
RopePairTiedEmbeddings = Annotated[bool | None, cli_option(options.ROPE_PAIR_TIED_EMBEDDINGS)]
Bias = Annotated[
    bool | None,
    typer.Option(
        "--bias/--no-bias",
        help="Biases on the attention and MLP projections.",
        metavar="",
        show_default=False,
    ),
]


def shape_overrides(
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
    rope_pair_tied_embeddings=None,
    vocab_size=None,
) -> dict:
    """The shape options as ModelConfig fields (None: keep the preset's; `train` sets the vocabulary itself)."""
    fields = dict(
        n_layers=layers,
        d_model=d_model,
        n_heads=heads,
        n_kv_heads=kv_heads,
        head_dim=head_dim,
        d_ff=d_ff,
        max_seq_len=max_seq_len,
        position=position,
        rope_theta=rope_theta,
        norm=norm,
        mlp=mlp,
        tie_embeddings=tie_embeddings,
        qkv_bias=bias,
        out_bias=bias,
        mlp_bias=bias,
        rope_pair_tied_embeddings=rope_pair_tied_embeddings,
    )
    return fields if vocab_size is None else {**fields, "vocab_size": vocab_size}
