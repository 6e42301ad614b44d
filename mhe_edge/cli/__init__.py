"""The `mhe-edge` command line: a thin layer over the public Python API.

One module per command group (build, convert, run, edge) registers its commands on `app`; options shared
by several commands are declared once in `options`; everything printed goes through `output`. The library
raises `MheEdgeError` subclasses; `main` is the one place that maps them (and usage errors, interrupts and
OS errors) to one line on stderr and the exit codes in docs/security.md. MHE_EDGE_DEBUG=1 or `--debug`
shows the traceback instead.
"""

from __future__ import annotations

import os
import signal
import sys

import typer
from rich.console import Console
from typer.exceptions import TyperException

import mhe_edge
from mhe_edge.cli.output import literal
from mhe_edge.errors import MheEdgeError, OutputError, first_line

INTERRUPTED = 130


class _HelpWithoutType:
    """`--help` is a flag: show it without a `<bool>` type, like every other flag here."""

    def get_help_option(self, ctx):
        option = super().get_help_option(ctx)
        if option is not None:
            option.metavar = ""
        return option


class _Command(_HelpWithoutType, typer.core.TyperCommand):
    pass


class _Group(_HelpWithoutType, typer.core.TyperGroup):
    pass


app = typer.Typer(
    cls=_Group,
    name="mhe-edge",
    help="Ship MHE-attention transformers to the edge: build, export to ONNX, optimize, run, profile, compare.\n\n"
    "Start with `mhe-edge compare` (MHE beside MHA, MQA and GQA on ONNX Runtime).\n\n"
    "A pipeline by hand: `init` a checkpoint, `export` it (add `--optimize --target ort`), then `generate`, "
    "`profile`, `to-ort` or `package` the ONNX file.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="markdown",
)


def command(*args, **kwargs):
    """`app.command`, with flags shown as flags in `--help`; every command module registers through this."""
    return app.command(*args, cls=_Command, **kwargs)


def _version(value: bool) -> None:
    if value:
        print(f"mhe-edge {mhe_edge.__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Print the version.", metavar=""
    ),
    debug: bool = typer.Option(
        False, "--debug", help="Show tracebacks for errors (also MHE_EDGE_DEBUG=1).", metavar=""
    ),
) -> None:
    """`--debug` is read by `main` before the app runs (it decides how errors are shown)."""


from mhe_edge.cli import build, conversion, convert, edge, run, text  # noqa: E402,F401  (each registers its commands on `app`)


class _Terminated(KeyboardInterrupt):
    """SIGTERM or SIGHUP, raised like Ctrl-C so every staging folder is removed on the way out."""


def _raise_interrupt(signum, frame):
    raise _Terminated(signal.Signals(signum).name)


def main(argv: list[str] | None = None) -> None:
    """Entry point: run the app, map every failure to one line and its exit code."""
    args = list(argv if argv is not None else sys.argv[1:])
    debug = "--debug" in args or os.environ.get("MHE_EDGE_DEBUG") == "1"
    for name in ("SIGTERM", "SIGHUP"):
        if hasattr(signal, name):
            signal.signal(getattr(signal, name), _raise_interrupt)
    if (
        signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    ):  # started in the background: Ctrl-C still cleans up
        signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        code = app(args=args, standalone_mode=False)
    except MheEdgeError as exc:
        if debug:
            raise
        _fail(str(exc), exc.exit_code)
    except TyperException as exc:  # usage errors: unknown option, missing argument, bad value
        message = exc.format_message() if hasattr(exc, "format_message") else str(exc)
        command = getattr(getattr(exc, "ctx", None), "command_path", "mhe-edge")
        _fail(f"{message} (see `{command} --help`)", exc.exit_code)
    except OSError as exc:  # disk full, permissions: the staged outputs were already removed
        if debug:
            raise
        where = f": {exc.filename}" if exc.filename else ""
        _fail(
            f"cannot complete the operation ({exc.strerror or first_line(exc)}){where}; nothing was written",
            OutputError.exit_code,
        )
    except (typer.Abort, KeyboardInterrupt):
        _exit_interrupted()
    if (
        code == INTERRUPTED
    ):  # typer turns Ctrl-C into exit code 130; staged outputs were removed on the way out
        _exit_interrupted()
    sys.exit(code if isinstance(code, int) else 0)


def _exit_interrupted() -> None:
    """Say so and end with exit code 130 now: the staged outputs are already gone.

    The line is written to stderr directly, not through rich: a signal that lands inside a rich print
    (a step's tick line) can leave that console buffering everything after it, and the buffer dies with
    `os._exit`. The exit itself is `os._exit` because a normal interpreter exit was seen to end the
    process by SIGINT instead (CPython kills itself with SIGINT at exit when it believes a
    KeyboardInterrupt went unhandled), which a caller reads as a crash, not as the documented code."""
    sys.stdout.flush()
    sys.stderr.write("interrupted; nothing was written\n")
    sys.stderr.flush()
    os._exit(INTERRUPTED)


def _fail(message: str, exit_code: int) -> None:
    """One line on stderr: control characters in names (newlines included) are shown escaped, never obeyed.
    It goes through a fresh console: the shared one may be left buffering by a signal (as above)."""
    Console(stderr=True).print(
        f"[bold red]error:[/] {literal(message.strip())}", highlight=False, soft_wrap=True
    )
    sys.exit(exit_code)
