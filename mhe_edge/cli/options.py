"""Options shared by several commands, declared once (typer `Annotated` aliases) and reused everywhere.

Flags carry `metavar=""` so `--help` shows `--force`, not `--force <bool>`. Numbers carry their bounds, so
typer refuses a bad value with a usage error (exit 2) before any work starts.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from mhe_edge.config import ARCHS, ATTENTION_KINDS, PRESETS


def flag(name: str, help: str) -> typer.models.OptionInfo:
    return typer.Option(name, help=help, metavar="")


Force = Annotated[
    bool, flag("--force", "Replace an existing output (only what mhe-edge wrote, for folders).")
]
Json = Annotated[
    bool,
    flag("--json", "Print one JSON object (the Python API's `to_dict()`), nothing else on stdout."),
]
OutputFile = Annotated[
    Optional[Path], typer.Option("-o", "--output", help="Where to write (default: beside MODEL).")
]
OnnxModel = Annotated[Path, typer.Argument(help="An mhe-edge export (.onnx).", show_default=False)]
DecoderModel = Annotated[Path, typer.Argument(help="A decoder export (.onnx).", show_default=False)]
Provider = Annotated[
    str,
    typer.Option(help="cpu or cuda; refused (exit 7), never silently replaced, when unavailable."),
]
Threads = Annotated[
    Optional[int],
    typer.Option(min=1, max=1024, help="ONNX Runtime intra-op threads (default: all cores)."),
]
PrefillChunk = Annotated[
    Optional[int],
    typer.Option(min=1, max=1_000_000, help="Feed the prompt in chunks of this many tokens."),
]
Batch = Annotated[int, typer.Option(min=1, max=4096, help="Sequences per call.")]
Runs = Annotated[int, typer.Option(min=1, max=10_000, help="Measured runs per point.")]
NewTokens = Annotated[
    int, typer.Option(min=0, max=1_000_000, help="Decode steps after the prefill (decoders).")
]
# Parity of fp32 files: `export` (against PyTorch) and `optimize` (against its input) take the same two.
Atol = Annotated[
    float,
    typer.Option(min=1e-12, max=1.0, help="Allowed |difference| on any output, plus rtol's share."),
]
Rtol = Annotated[
    float,
    typer.Option(
        min=0.0,
        max=1.0,
        help="Allowed |difference| per unit of the output's largest magnitude (fp32 rounding grows with it).",
    ),
]
Target = Annotated[
    str,
    typer.Option(
        help="std: one standard Attention per layer; ort: com.microsoft.GroupQueryAttention; portable: basic ops only."
    ),
]
Arch = Annotated[str, typer.Option(help=f"One of: {', '.join(ARCHS)}.")]
Preset = Annotated[str, typer.Option(help=f"Starting sizes: {', '.join(PRESETS)}.")]
Attention = Annotated[str, typer.Option(help=f"One of: {', '.join(ATTENTION_KINDS)}.")]

# The model's shape: `init` and `train` take the same options (unset ones keep the preset's).
Layers = Annotated[
    Optional[int], typer.Option("--layers", min=1, max=1024, help="Override the number of blocks.")
]
DModel = Annotated[
    Optional[int], typer.Option("--d-model", min=1, max=65_536, help="Override the model width.")
]
Heads = Annotated[
    Optional[int],
    typer.Option("--heads", min=1, max=1024, help="Override the number of (query) heads."),
]
KvHeads = Annotated[
    Optional[int], typer.Option("--kv-heads", min=1, max=1024, help="KV heads, for gqa.")
]
HeadDim = Annotated[
    Optional[int],
    typer.Option("--head-dim", min=1, max=4096, help="Head size (default d_model / heads)."),
]
DFf = Annotated[
    Optional[int],
    typer.Option("--d-ff", min=1, max=262_144, help="MLP width (default 4 * d_model)."),
]
MaxSeqLen = Annotated[
    Optional[int],
    typer.Option("--max-seq-len", min=1, max=1_048_576, help="Longest sequence (positions)."),
]
Position = Annotated[
    Optional[str],
    typer.Option("--position", help="learned (a table of positions) or rope (rotary)."),
]
RopeTheta = Annotated[
    Optional[float],
    typer.Option("--rope-theta", min=1.0, max=1e12, help="RoPE's base, with --position rope."),
]
Norm = Annotated[Optional[str], typer.Option("--norm", help="layernorm or rmsnorm.")]
Mlp = Annotated[Optional[str], typer.Option("--mlp", help="gelu, gelu_tanh or swiglu.")]
TieEmbeddings = Annotated[
    Optional[bool],
    typer.Option(
        "--tie-embeddings/--no-tie-embeddings",
        help="The output projection reuses the token embeddings (decoders).",
        metavar="",
        show_default=False,
    ),
]
Bias = Annotated[
    Optional[bool],
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
    )
    return fields if vocab_size is None else {**fields, "vocab_size": vocab_size}
