"""`to-ort`: convert an export to the ONNX Runtime mobile format with ONNX Runtime's own converter, write the
required-operators config a reduced-size build takes (`--include_ops_by_config`), and check the `.ort` file
against the `.onnx` on ONNX Runtime before either appears.

Optimization level "basic" (the default) keeps the graph to standard ONNX ops, so a reduced build of the
ai.onnx domain runs it; "extended"/"all" bake in ONNX Runtime's CPU fusions (com.microsoft ops).
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mhe_edge import options
from mhe_edge.errors import ExportError, OutputError, RequestError, first_line
from mhe_edge.files import check_output, read_header, staged_output
from mhe_edge.results import Result
from mhe_edge.sessions import create_session, quiet_ort_tools
from mhe_edge.verification import (
    ParityRecord,
    compare_runners,
    max_abs_diff,
    ort_runner,
    raise_on_failures,
)

OPTIMIZATION_LEVELS = options.ORT_OPTIMIZATION_LEVEL.choices
# The .ort file against its .onnx, both on ONNX Runtime: (atol, rtol) per float type. The rtol share keeps
# the check honest on large logits, where a fused kernel's different summation order moves the last bits.
ORT_TOLERANCE = {"float32": (1e-5, 1e-6), "float16": (1e-2, 1e-3)}


@dataclass
class ToOrtReport(Result):
    source: str
    ort: str
    required_operators_config: str
    optimization_level: str
    required_operators: dict[str, list[str]]  # by domain (ai.onnx is the standard one)
    ort_bytes: int
    onnx_bytes: int
    max_abs_diff: float
    parity: list[ParityRecord] = field(default_factory=list)
    mobile_coverage: dict[str, Any] = field(
        default_factory=dict
    )  # NNAPI/CoreML share of nodes (edge/mobile.py)


def read_required_operators(config_path: str | os.PathLike) -> dict[str, list[str]]:
    """'domain;opset;Op1,Op2' lines -> {domain: sorted ops} (ai.onnx is the standard domain)."""
    ops: dict[str, set[str]] = {}
    for line in Path(config_path).read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        domain, _opset, names = line.split(";")
        ops.setdefault(domain, set()).update(n for n in names.split(",") if n)
    return {domain: sorted(names) for domain, names in sorted(ops.items())}


def to_ort(
    model: str | os.PathLike,
    output: str | os.PathLike | None = None,
    *,
    optimization_level: str = options.ORT_OPTIMIZATION_LEVEL.default,
    force: bool = False,
) -> ToOrtReport:
    """Convert an export to the ONNX Runtime mobile format and write OUTPUT.required_operators.config beside it.

    Example: `mhe_edge.to_ort("model.opt.onnx", "model.ort").required_operators`
    """
    from onnxruntime.tools.convert_onnx_models_to_ort import (
        OptimizationStyle,
        convert_onnx_models_to_ort,
    )

    source = Path(model)
    options.ORT_OPTIMIZATION_LEVEL.check(optimization_level)
    header = read_header(source)  # refuses files that are not mhe-edge exports
    if header.external_files:
        raise RequestError(
            f"{source.name} keeps its weights in external data, which the .ort format cannot hold"
        )
    target = check_output(
        output if output is not None else source.with_suffix(".ort"),
        force=force,
        suffixes=(".ort",),
        inputs=[source],
    )
    operators_path = check_output(
        target.with_suffix(".required_operators.config"), force=force, inputs=[source]
    )

    with tempfile.TemporaryDirectory(prefix=f".{target.name[:80]}.", dir=target.parent) as tmp:
        staged_onnx = (
            Path(tmp) / "model.onnx"
        )  # a short name: the converter's outputs add suffixes to it
        try:  # a hard link (the converter resolves symlinks, so their long names would come back)
            os.link(source, staged_onnx)
        except OSError:  # another file system
            shutil.copyfile(source, staged_onnx)
        with (
            quiet_ort_tools(),  # the converter narrates every step
            _env("ORT_CONVERT_ONNX_MODELS_TO_ORT_OPTIMIZATION_LEVEL", optimization_level),
        ):
            try:
                convert_onnx_models_to_ort(
                    staged_onnx,
                    output_dir=Path(tmp) / "out",
                    optimization_styles=[OptimizationStyle.Fixed],
                )
            except Exception as exc:
                if _disk_full(exc):
                    raise OutputError(
                        f"cannot write {target.name}: the disk is full or the file too large; nothing was written"
                    ) from exc
                raise ExportError(
                    f"ONNX Runtime could not convert {source.name}: {first_line(exc)}"
                ) from exc
        produced = list((Path(tmp) / "out").glob("*.ort"))
        configs = list((Path(tmp) / "out").glob("*.config"))
        if len(produced) != 1 or len(configs) != 1:
            raise ExportError(
                f"the converter wrote {len(produced)} .ort and {len(configs)} config files, expected one each"
            )
        atol, rtol = ORT_TOLERANCE[header.float_dtype]
        records = compare_runners(
            header.config,
            ort_runner(create_session(produced[0], checking=True)),
            ort_runner(create_session(source, checking=True)),
            atol,
            batched_chunks=header.batched_chunks,
            rtol=rtol,
        )
        raise_on_failures(records, "the .ort model disagrees with the .onnx")
        operators = read_required_operators(configs[0])
        with (
            staged_output(operators_path, force=force) as staged_config,
            staged_output(target, force=force) as staged_ort,
        ):
            os.replace(configs[0], staged_config)
            os.replace(produced[0], staged_ort)
    from mhe_edge.edge.mobile import mobile_coverage

    return ToOrtReport(
        source=str(source),
        ort=str(target),
        required_operators_config=str(operators_path),
        optimization_level=optimization_level,
        required_operators=operators,
        ort_bytes=target.stat().st_size,
        onnx_bytes=header.file_bytes,
        max_abs_diff=max_abs_diff(records),
        parity=records,
        mobile_coverage=mobile_coverage(source),
    )


def _disk_full(exc: BaseException | None) -> bool:
    """Whether writing failed (ENOSPC/EFBIG, or ONNX Runtime's words for a failed save) anywhere in the chain."""
    while exc is not None:
        if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EFBIG):
            return True
        if any(
            words in str(exc)
            for words in ("No space left", "File too large", "Failed to save ORT format model")
        ):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


@contextlib.contextmanager
def _env(name: str, value: str):
    old = os.environ.get(name)
    os.environ[name] = value
    try:
        yield
    finally:
        if old is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = old
