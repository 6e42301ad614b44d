"""`to-ort`: convert an export to the ONNX Runtime mobile format with ONNX Runtime's own converter, write the
required-operators config a reduced-size build takes (`--include_ops_by_config`), and check the `.ort` file
against the `.onnx` on ONNX Runtime before either appears.

Optimization level "basic" (the default) keeps the graph to standard ONNX ops, so a reduced build of the
ai.onnx domain runs it; "extended"/"all" bake in ONNX Runtime's CPU fusions (com.microsoft ops).
"""
from __future__ import annotations

import contextlib
import io
import logging
import os
import tempfile
from pathlib import Path
from typing import Any

from mhe_edge.atomic import check_output_path
from mhe_edge.errors import ExportError, RequestError
from mhe_edge.exporters.metadata import read_metadata
from mhe_edge.verification import compare_runners, max_abs_diff, ort_runner, raise_on_failures

OPTIMIZATION_LEVELS = ("basic", "extended", "all")
ORT_ATOL = {"float32": 1e-5, "float16": 1e-2}


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
    optimization_level: str = "basic",
    force: bool = False,
) -> dict[str, Any]:
    from onnxruntime.tools.convert_onnx_models_to_ort import OptimizationStyle, convert_onnx_models_to_ort

    from mhe_edge.runtime import create_session

    source = Path(model)
    if optimization_level not in OPTIMIZATION_LEVELS:
        raise RequestError(f"optimization level must be one of {', '.join(OPTIMIZATION_LEVELS)}, not {optimization_level!r}")
    config, props, _ = read_metadata(source)  # refuses files that are not mhe-edge exports
    target = check_output_path(output if output is not None else source.with_suffix(".ort"), force=force)
    if target.suffix != ".ort":
        raise RequestError(f"output must end in .ort, not {target.name!r}")
    operators_path = check_output_path(target.with_suffix(".required_operators.config"), force=force)

    with tempfile.TemporaryDirectory(prefix=f".{target.name}.", dir=target.parent) as tmp:
        staged_onnx = Path(tmp) / f"{target.stem}.onnx"
        os.symlink(source.resolve(), staged_onnx)
        with _converter_quiet(), _env("ORT_CONVERT_ONNX_MODELS_TO_ORT_OPTIMIZATION_LEVEL", optimization_level):
            try:
                convert_onnx_models_to_ort(staged_onnx, output_dir=Path(tmp) / "out", optimization_styles=[OptimizationStyle.Fixed])
            except Exception as exc:
                raise ExportError(f"ONNX Runtime could not convert {source.name}: {str(exc).strip().splitlines()[0][:300]}") from None
        produced = list((Path(tmp) / "out").glob("*.ort"))
        configs = list((Path(tmp) / "out").glob("*.config"))
        if len(produced) != 1 or len(configs) != 1:
            raise ExportError(f"the converter wrote {len(produced)} .ort and {len(configs)} config files, expected one each")
        dtype = "float16" if '"float_dtype": "float16"' in props.get("mhe_edge.io", "") else "float32"
        records = compare_runners(config, ort_runner(create_session(produced[0])), ort_runner(create_session(source)), ORT_ATOL[dtype])
        raise_on_failures(records, "the .ort model disagrees with the .onnx")
        operators = read_required_operators(configs[0])
        os.replace(configs[0], operators_path)
        os.replace(produced[0], target)
    return {
        "source": str(source), "ort": str(target), "required_operators_config": str(operators_path),
        "optimization_level": optimization_level, "required_operators": operators,
        "ort_bytes": target.stat().st_size, "onnx_bytes": source.stat().st_size,
        "max_abs_diff": max_abs_diff(records), "parity": [r.to_dict() for r in records],
    }


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


@contextlib.contextmanager
def _converter_quiet():
    """The converter narrates every step on stdout and the root logger; the report says what matters."""
    previous = logging.root.manager.disable
    logging.disable(logging.WARNING)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        logging.disable(previous)
