"""The `mhe-edge` command line: each command parses options and calls a library function.

Every refusal is an `MheEdgeError`; `main` turns it into one line on stderr and the class's exit code.
Set MHE_EDGE_DEBUG=1 (or pass --debug) to see the traceback instead.
"""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any, Optional

import typer
from typer.exceptions import TyperException
from rich.console import Console
from rich.table import Table

import mhe_edge
from mhe_edge.config import ARCHS, ATTENTION_KINDS, PRESETS
from mhe_edge.errors import MheEdgeError

app = typer.Typer(
    name="mhe-edge",
    help="Ship MHE-attention transformers to the edge: build, export to ONNX, inspect.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="markdown",
)
out = Console()
err = Console(stderr=True)


def _version(value: bool) -> None:
    if value:
        print(f"mhe-edge {mhe_edge.__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version."),
    debug: bool = typer.Option(False, "--debug", help="Show tracebacks for errors (also MHE_EDGE_DEBUG=1)."),
) -> None:
    if debug:
        os.environ["MHE_EDGE_DEBUG"] = "1"


@app.command()
def init(
    output: Path = typer.Argument(..., help="Checkpoint to write: .pt or .safetensors."),
    arch: str = typer.Option("decoder", help=f"One of: {', '.join(ARCHS)}."),
    attention: str = typer.Option("mhe-mul", help=f"One of: {', '.join(ATTENTION_KINDS)}."),
    preset: str = typer.Option("tiny", help=f"Starting sizes: {', '.join(PRESETS)}."),
    layers: Optional[int] = typer.Option(None, help="Override the number of blocks."),
    d_model: Optional[int] = typer.Option(None, help="Override the model width."),
    heads: Optional[int] = typer.Option(None, help="Override the number of (query) heads."),
    kv_heads: Optional[int] = typer.Option(None, help="KV heads, for gqa."),
    head_dim: Optional[int] = typer.Option(None, help="Head size (default d_model / heads)."),
    d_ff: Optional[int] = typer.Option(None, help="MLP width (default 4 * d_model)."),
    vocab_size: Optional[int] = typer.Option(None, help="Vocabulary size."),
    max_seq_len: Optional[int] = typer.Option(None, help="Longest sequence (positions)."),
    seed: int = typer.Option(0, help="Seed for the random weights."),
    force: bool = typer.Option(False, "--force", help="Overwrite an existing file."),
    as_json: bool = typer.Option(False, "--json", help="Print the result as JSON."),
) -> None:
    """Write a seeded random-weight checkpoint.

    Example: `mhe-edge init model.pt --arch decoder --attention mhe-add --preset tiny`
    """
    from mhe_edge.workflows import init_checkpoint

    report = init_checkpoint(
        output, arch=arch, attention=attention, preset=preset, seed=seed, force=force,
        n_layers=layers, d_model=d_model, n_heads=heads, n_kv_heads=kv_heads, head_dim=head_dim,
        d_ff=d_ff, vocab_size=vocab_size, max_seq_len=max_seq_len,
    )
    if as_json:
        print(json.dumps(report))
    else:
        cfg = report["config"]
        out.print(
            f"wrote {report['path']}: {cfg['arch']} {cfg['attention']}, {cfg['n_layers']} layers, "
            f"d_model {cfg['d_model']}, {cfg['n_heads']} heads, {report['parameters']['total']:,} parameters"
        )


@app.command()
def inspect(
    path: Path = typer.Argument(..., help="A checkpoint (.pt, .safetensors) or an ONNX export (.onnx)."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object instead of tables."),
) -> None:
    """Describe a checkpoint or export: config, parameters by component, bytes, KV cache per token.

    Example: `mhe-edge inspect model.pt --json`
    """
    from mhe_edge.inspection import describe

    report = describe(path)
    if as_json:
        print(json.dumps(report))
        return
    _print_report(report)


def _print_report(report: dict[str, Any]) -> None:
    table = Table(title=f"{report['path']} ({report['kind']})", show_header=False)
    for key, value in report["config"].items():
        table.add_row(key, str(value))
    for key, value in report["parameters"].items():
        table.add_row(f"parameters.{key}", f"{value:,}")
    for key, value in report.items():
        if key not in ("config", "parameters", "path", "kind") and not isinstance(value, (dict, list)):
            table.add_row(key, f"{value:,}" if isinstance(value, int) else str(value))
    for key, value in report.get("op_counts", {}).items():
        table.add_row(f"ops.{key}", str(value))
    out.print(table)


def main(argv: list[str] | None = None) -> None:
    """Entry point: run the app, map mhe-edge errors to one line and their exit code."""
    debug = "--debug" in (argv if argv is not None else sys.argv[1:]) or os.environ.get("MHE_EDGE_DEBUG") == "1"
    try:
        code = app(args=argv, standalone_mode=False)
    except MheEdgeError as exc:
        if debug:
            raise
        err.print(f"[bold red]error:[/] {exc}", highlight=False, soft_wrap=True)
        sys.exit(exc.exit_code)
    except TyperException as exc:  # usage errors: unknown option, missing argument, bad value
        show = getattr(exc, "show", None)
        show() if show else err.print(f"error: {exc}", highlight=False)
        sys.exit(exc.exit_code)
    except (typer.Abort, KeyboardInterrupt):
        err.print("interrupted; nothing was written", highlight=False)
        sys.exit(130)
    sys.exit(code if isinstance(code, int) else 0)
