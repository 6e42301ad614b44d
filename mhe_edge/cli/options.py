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


Force = Annotated[bool, flag("--force", "Replace an existing output (only what mhe-edge wrote, for folders).")]
Json = Annotated[bool, flag("--json", "Print one JSON object (the Python API's `to_dict()`), nothing else on stdout.")]
OutputFile = Annotated[Optional[Path], typer.Option("-o", "--output", help="Where to write (default: beside MODEL).")]
OnnxModel = Annotated[Path, typer.Argument(help="An mhe-edge export (.onnx).", show_default=False)]
DecoderModel = Annotated[Path, typer.Argument(help="A decoder export (.onnx).", show_default=False)]
Provider = Annotated[str, typer.Option(help="cpu or cuda; refused (exit 7), never silently replaced, when unavailable.")]
Threads = Annotated[Optional[int], typer.Option(min=1, max=1024, help="ONNX Runtime intra-op threads (default: all cores).")]
PrefillChunk = Annotated[Optional[int], typer.Option(min=1, max=1_000_000, help="Feed the prompt in chunks of this many tokens.")]
Batch = Annotated[int, typer.Option(min=1, max=4096, help="Sequences per call.")]
Runs = Annotated[int, typer.Option(min=1, max=10_000, help="Measured runs per point.")]
NewTokens = Annotated[int, typer.Option(min=0, max=1_000_000, help="Decode steps after the prefill (decoders).")]
Target = Annotated[str, typer.Option(help="std: one standard Attention per layer; ort: com.microsoft.GroupQueryAttention; portable: basic ops only.")]
Arch = Annotated[str, typer.Option(help=f"One of: {', '.join(ARCHS)}.")]
Preset = Annotated[str, typer.Option(help=f"Starting sizes: {', '.join(PRESETS)}.")]
Attention = Annotated[str, typer.Option(help=f"One of: {', '.join(ATTENTION_KINDS)}.")]
