"""ONNX Runtime sessions that never fall back silently to another provider.

Below the exporters, the passes and the runtime alike: each checks its results on a real session."""

from __future__ import annotations

import contextlib
import io
import logging
import os
from collections.abc import Iterator

from mhe_edge.errors import ModelFileError, ProviderError, RequestError, first_line

PROVIDERS = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider"}


def onnxruntime():
    """The onnxruntime module, or a refusal saying which extra installs it (mhe-edge depends on neither wheel)."""
    try:
        import onnxruntime as ort
    except ImportError as exc:
        raise ProviderError(
            "ONNX Runtime is not installed: pip install 'mhe-edge[cpu]' (or 'mhe-edge[cuda]' for its CUDA build)"
        ) from exc
    return ort


def check_provider(provider: str) -> str:
    """ONNX Runtime's name for `provider`, or a refusal: unknown (RequestError) or not in this build (ProviderError)."""
    ort = onnxruntime()

    if provider not in PROVIDERS:
        raise RequestError(f"unknown provider {provider!r}; choose one of {', '.join(PROVIDERS)}")
    wanted = PROVIDERS[provider]
    if wanted not in ort.get_available_providers():
        raise ProviderError(
            f"ONNX Runtime {ort.__version__} here has no {wanted}"
            f" (available: {', '.join(ort.get_available_providers())});"
            " install the CUDA build (pip install 'mhe-edge[cuda]', or bash scripts/setup.sh"
            " --cuda) with matching CUDA and cuDNN libraries"
        )
    return wanted


def create_session(
    path: str | os.PathLike,
    provider: str = "cpu",
    threads: int | None = None,
    profile_prefix: str | None = None,
    checking: bool = False,
):
    """An InferenceSession on exactly `provider`; raises ProviderError if ONNX Runtime lands elsewhere.

    `profile_prefix` turns on ONNX Runtime's profiler (its trace goes to PREFIX_<time>.json). `checking`
    is for a session that runs a few parity or scoring calls: ONNX Runtime's weight prepacking is off, so
    the weights stay where the file's data is mapped instead of each MatMul's being copied into a packed
    buffer (at Qwen2-0.5B's shape, a 1.1 GB peak instead of 2.5 GB); a session that decodes keeps it."""
    ort = onnxruntime()

    wanted = check_provider(provider)
    options = ort.SessionOptions()
    options.log_severity_level = (
        4  # fatal only: errors come back as exceptions, which mhe-edge reports in one line
    )
    if threads is not None:
        if threads < 1:
            raise RequestError(f"threads must be at least 1, not {threads}")
        options.intra_op_num_threads = threads
    # Waiting threads sleep instead of spinning, as onnxruntime-genai's sessions do: on cores shared with
    # other work a spinning pool loses its time slices (int4 decode at Qwen2-0.5B's size, 2 loaded cores:
    # 58 ms a token spinning, 28 ms not); an idle machine pays ~0.1 ms a step on tiny models.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if checking:
        options.add_session_config_entry("session.disable_prepacking", "1")
    if profile_prefix:
        options.enable_profiling = True
        options.profile_file_prefix = profile_prefix
    providers = [wanted] if provider == "cpu" else [wanted, "CPUExecutionProvider"]
    try:
        session = ort.InferenceSession(str(path), sess_options=options, providers=providers)
    except Exception as exc:  # ORT raises its own pybind classes; report them as one line
        raise ModelFileError(
            f"ONNX Runtime cannot load {os.fspath(path)!r}: {first_line(exc)}"
        ) from exc
    if session.get_providers()[0] != wanted:
        raise ProviderError(
            f"asked for {wanted} but ONNX Runtime gave {session.get_providers()[0]} (silent fallback refused)"
        )
    return session


class _DropOrtToolRecords(logging.Filter):
    """Drops log records below ERROR that ONNX Runtime's own Python tools emit."""

    def __init__(self) -> None:
        super().__init__()
        self.package = os.path.dirname(onnxruntime().__file__) + os.sep

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.ERROR or not record.pathname.startswith(self.package)


@contextlib.contextmanager
def quiet_ort_tools() -> Iterator[None]:
    """Run ONNX Runtime's quantizers and converters without their narration (advice on the root logger,
    step logs on stdout): only their own records are dropped, and only for the call; everything else the
    process logs still gets through. A handler the tool installs on the root logger is removed after."""
    drop = _DropOrtToolRecords()
    handlers = list(logging.root.handlers)
    watched = [logging.root, *handlers, *([logging.lastResort] if logging.lastResort else [])]
    for item in watched:
        item.addFilter(drop)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        for item in watched:
            item.removeFilter(drop)
        for handler in [h for h in logging.root.handlers if h not in handlers]:
            logging.root.removeHandler(handler)
