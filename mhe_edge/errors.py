"""One exception family for everything mhe-edge refuses; the CLI maps each class to an exit code."""

from __future__ import annotations

import re


class MheEdgeError(Exception):
    """Base of every error mhe-edge raises on purpose. Its message is one line, shown to the user."""

    exit_code = 1


class ConfigError(MheEdgeError):
    """A model configuration that cannot describe a model (e.g. heads that do not divide)."""

    exit_code = 2


class RequestError(MheEdgeError):
    """A command-line request that makes no sense (bad option value, missing folder, existing output)."""

    exit_code = 2


class CheckpointError(MheEdgeError):
    """A file that is not a loadable mhe-edge checkpoint, or one that does not fit its own config."""

    exit_code = 3


class ModelFileError(MheEdgeError):
    """An ONNX file that cannot be read, or is not the mhe-edge export a command needs."""

    exit_code = 4


class ExportError(MheEdgeError):
    """Tracing or writing the ONNX graph failed."""

    exit_code = 5


class ParityError(MheEdgeError):
    """An exported or rewritten model disagrees numerically with its reference beyond tolerance."""

    exit_code = 6

    def __init__(self, message: str, records=None):
        super().__init__(message)
        self.records = list(records or [])


class ProviderError(MheEdgeError):
    """An execution provider was asked for and ONNX Runtime cannot give it."""

    exit_code = 7


class OutputError(MheEdgeError):
    """An output could not be written (disk full, file too large, no permission); nothing was left behind."""

    exit_code = 8


class TrainingInterrupted(MheEdgeError):
    """Ctrl-C (or SIGTERM) during training: a resumable checkpoint was saved first (exit code as for any interrupt)."""

    exit_code = 130


def first_line(source: BaseException | str, limit: int = 300) -> str:
    """The first non-empty line of an exception's message (or of a tool's output), cut to `limit`
    characters; the exception's class name when there is no text at all. Terminal colour codes are dropped."""
    text = source if isinstance(source, str) else str(source)
    for line in text.splitlines():
        line = _ANSI.sub("", line).strip()
        if line:
            return line[:limit]
    return type(source).__name__ if isinstance(source, BaseException) else "no output"


_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
