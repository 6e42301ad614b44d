"""`export`: checkpoint -> validated ONNX file, with the steps reported as they run."""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from mhe_edge.atomic import check_output_path
from mhe_edge.progress import timed_steps
from mhe_edge.errors import ExportError, RequestError
from mhe_edge.exporters.metadata import build_metadata
from mhe_edge.exporters.mhe_function import DOMAIN, OP_TYPE
from mhe_edge.models import Transformer
from mhe_edge.onnx_files import EXTERNAL_DATA_THRESHOLD, check_full, initializer_bytes, op_counts, publish, save_ir_model, staged
from mhe_edge.verification import ParityRecord, max_abs_diff, compare_runners, ort_runner, raise_on_failures, torch_runner

MIN_OPSET = 23  # the first with the standard Attention operator


@dataclass
class ExportReport:
    path: str
    source: str
    config: dict[str, Any]
    opset: int
    external_data: bool
    file_bytes: int
    op_counts: dict[str, int]
    parity: list[ParityRecord] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)

    @property
    def max_abs_diff(self) -> float:
        return max_abs_diff(self.parity)

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": self.path, "source": self.source, "config": self.config, "opset": self.opset,
            "external_data": self.external_data, "file_bytes": self.file_bytes, "op_counts": self.op_counts,
            "max_abs_diff": self.max_abs_diff, "parity": [r.to_dict() for r in self.parity],
            "seconds": self.seconds, "total_seconds": round(sum(self.seconds.values()), 3),
        }


def supported_opsets() -> range:
    import onnx

    return range(MIN_OPSET, onnx.defs.onnx_opset_version() + 1)


def export(
    model: Transformer | str | os.PathLike,
    output: str | os.PathLike | None = None,
    *,
    opset: int = MIN_OPSET,
    atol: float = 1e-4,
    external_data: bool = False,
    validate: bool = True,
    force: bool = False,
    on_step: Callable[[str], None] | None = None,
) -> ExportReport:
    """Export a model (or a checkpoint path) to ONNX and check it against PyTorch.

    Nothing appears at `output` unless the full ONNX check and the parity check (ORT vs PyTorch within
    `atol`) pass. Raises an `MheEdgeError` subclass otherwise.
    """
    if opset not in supported_opsets():
        raise RequestError(
            f"opset {opset} is not supported: use {MIN_OPSET} (the first with the standard Attention op)"
            f" to {supported_opsets()[-1]}"
        )
    if not atol > 0:
        raise RequestError(f"atol must be positive, not {atol}")
    if output is None:
        if not isinstance(model, (str, os.PathLike)):
            raise RequestError("give an output path when exporting a model object")
        output = Path(model).with_suffix(".onnx")
    target = check_output_path(output, force=force)
    if target.suffix != ".onnx":
        raise RequestError(f"output must end in .onnx, not {target.name!r}")
    seconds: dict[str, float] = {}
    step = timed_steps(seconds, on_step)

    with step("load"):
        source = "<module>"
        if isinstance(model, (str, os.PathLike)):
            from mhe_edge.checkpoint import load_model

            source = str(model)
            model = load_model(model)
        model.eval()
        config = model.config
    with step("trace"):
        from mhe_edge.exporters.tracing import attach_mhe_function, trace

        try:
            ir_model = trace(model, opset)
        except Exception as exc:  # torch.export raises many classes; the first line says what went wrong
            raise ExportError(f"tracing failed: {_first_line(exc)}") from exc
    with step("attach functions"):
        attach_mhe_function(ir_model, opset)
        ir_model.metadata_props.update(build_metadata(config, graph="export"))
        _check_fused_nodes(ir_model, config)
    use_external = external_data or initializer_bytes(ir_model) > EXTERNAL_DATA_THRESHOLD
    with staged(target) as tmp:
        with step("check"):
            save_ir_model(ir_model, tmp, use_external)
            check_full(tmp)
        records: list[ParityRecord] = []
        if validate:
            with step("validate"):
                from mhe_edge.runtime import create_session

                session = create_session(tmp, "cpu")
                records = compare_runners(config, ort_runner(session), torch_runner(model), atol)
                raise_on_failures(records, "ONNX Runtime disagrees with PyTorch")
        with step("save"):
            file_bytes = publish(tmp, target)
    return ExportReport(str(target), source, config.to_dict(), opset, use_external, file_bytes, op_counts(ir_model), records, seconds)


def _check_fused_nodes(ir_model, config) -> None:
    """One fused attention node per layer, or the export is not what it claims to be."""
    fused = [n for n in ir_model.graph if (n.domain, n.op_type) in ((DOMAIN, OP_TYPE), ("", "Attention"))]
    if len(fused) != config.n_layers:
        raise ExportError(f"expected {config.n_layers} fused attention nodes, traced {len(fused)}")


def _first_line(exc: BaseException) -> str:
    for line in str(exc).splitlines():
        line = line.strip().replace("\x1b[96m", "").replace("\x1b[0m", "")
        if line:
            return line[:300]
    return type(exc).__name__
