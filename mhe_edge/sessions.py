"""ONNX Runtime sessions that never fall back silently to another provider.

Below the exporters, the passes and the runtime alike: each checks its results on a real session."""

from __future__ import annotations

import os

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
            f"ONNX Runtime {ort.__version__} here has no {wanted} (available: {', '.join(ort.get_available_providers())});"
            " install the CUDA build (pip install 'mhe-edge[cuda]', or bash scripts/setup.sh --cuda) with matching CUDA and cuDNN libraries"
        )
    return wanted


def create_session(
    path: str | os.PathLike,
    provider: str = "cpu",
    threads: int | None = None,
    profile_prefix: str | None = None,
):
    """An InferenceSession on exactly `provider`; raises ProviderError if ONNX Runtime lands elsewhere.

    `profile_prefix` turns on ONNX Runtime's profiler (its trace goes to PREFIX_<time>.json)."""
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
