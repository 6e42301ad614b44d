"""`optimize`: an mhe-edge export -> folded, lowered, cleaned (and optionally fp16/int8) export, checked
against the input with ONNX Runtime before it is written."""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from mhe_edge.atomic import check_output_path
from mhe_edge.progress import timed_steps
from mhe_edge.errors import MheEdgeError, ModelFileError, RequestError
from mhe_edge.exporters.metadata import KEY_GRAPH, KEY_IO, read_metadata
from mhe_edge.onnx_files import check_full, file_bytes, op_counts, publish, save_ir_model, staged
from mhe_edge.verification import ParityRecord, max_abs_diff, argmax_agreement, compare_runners, ort_runner, raise_on_failures

TARGETS = ("std", "ort")
FP32_ATOL, FP16_ATOL, FP16_MIN_ARGMAX = 1e-4, 1e-2, 0.99


@dataclass
class OptimizeReport:
    input: str
    output: str
    target: str
    precision: str
    passes: list[str]
    op_counts_before: dict[str, int]
    op_counts_after: dict[str, int]
    bytes_before: int
    bytes_after: int
    parity: list[ParityRecord] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)

    @property
    def max_abs_diff(self) -> float:
        return max_abs_diff(self.parity)

    def to_dict(self) -> dict[str, Any]:
        return {
            "input": self.input, "output": self.output, "target": self.target, "precision": self.precision,
            "passes": self.passes,
            "nodes": {"before": sum(self.op_counts_before.values()), "after": sum(self.op_counts_after.values())},
            "op_counts": {"before": self.op_counts_before, "after": self.op_counts_after},
            "bytes": {"before": self.bytes_before, "after": self.bytes_after},
            "max_abs_diff": self.max_abs_diff, "argmax_agreement": argmax_agreement(self.parity),
            "parity": [r.to_dict() for r in self.parity], "seconds": self.seconds,
        }


def build_passes(target: str = "std", fp16: bool = False, int8: bool = False) -> list:
    """The pass list for a target and precision, in order (each pass one file in mhe_edge/passes/)."""
    from mhe_edge.passes.cleanup import CleanupPass
    from mhe_edge.passes.fold_head_embeddings import FoldHeadEmbeddingsPass
    from mhe_edge.passes.lower_to_ort import LowerToGroupQueryAttentionPass

    if target not in TARGETS:
        raise RequestError(f"target must be one of {', '.join(TARGETS)}, not {target!r}")
    if fp16 and int8:
        raise RequestError("choose --fp16 or --int8, not both")
    passes = [FoldHeadEmbeddingsPass()]
    if target == "ort":
        passes.append(LowerToGroupQueryAttentionPass())
    passes.append(CleanupPass())
    if fp16:
        from mhe_edge.passes.float16 import ConvertToFloat16Pass

        passes.append(ConvertToFloat16Pass())
    if int8:
        from mhe_edge.passes.quantize_int8 import DynamicQuantizeInt8Pass

        passes.append(DynamicQuantizeInt8Pass())
    return passes


def optimize(
    source: str | os.PathLike,
    output: str | os.PathLike | None = None,
    *,
    target: str = "std",
    fp16: bool = False,
    int8: bool = False,
    force: bool = False,
    on_step: Callable[[str], None] | None = None,
) -> OptimizeReport:
    """Run the passes on an mhe-edge export and write the result if ONNX Runtime agrees with the input:
    fp32 within 1e-4; fp16 within 1e-2 with the same argmax on 99% of positions; int8 reports agreement."""
    import onnx_ir as ir

    source = Path(source)
    passes = build_passes(target, fp16, int8)
    target_path = check_output_path(output if output is not None else source.with_name(source.stem + ".opt.onnx"), force=force)
    if target_path.resolve() == source.resolve():
        raise RequestError("output would overwrite the input; choose another path")
    seconds: dict[str, float] = {}
    step = timed_steps(seconds, on_step)
    with step("load"):
        config, props, _ = read_metadata(source)
        try:
            check_full(source)
        except Exception as exc:
            raise ModelFileError(f"{source.name} is malformed: {exc}") from None
        model = ir.load(source)
        before = op_counts(model)
    with step("passes"):
        try:
            model = ir.passes.PassManager(passes)(model).model  # functional passes (int8) return a new model
        except ir.passes.PassError as exc:
            raise _own_error(exc) from exc
        precision = "fp16" if fp16 else "int8" if int8 else "fp32"
        applied = [type(p).__name__ for p in passes]
        model.metadata_props[KEY_GRAPH] = f"{props.get(KEY_GRAPH, 'export')}+optimize(target={target},precision={precision})"
        if fp16:
            model.metadata_props[KEY_IO] = _fp16_io(props[KEY_IO])
    with staged(target_path) as tmp:
        with step("check"):
            save_ir_model(model, tmp)
            check_full(tmp)
        with step("validate"):
            from mhe_edge.runtime import create_session

            candidate = ort_runner(create_session(tmp, "cpu"))
            reference = ort_runner(create_session(source, "cpu"))
            if fp16:
                records = compare_runners(config, candidate, reference, FP16_ATOL, min_argmax_agreement=FP16_MIN_ARGMAX)
                raise_on_failures(records, "the fp16 model disagrees with its input")
            elif int8:  # quantization error is expected; the report carries the agreement
                records = compare_runners(config, candidate, reference, float("inf"))
            else:
                records = compare_runners(config, candidate, reference, FP32_ATOL)
                raise_on_failures(records, "the optimized model disagrees with its input")
        with step("save"):
            written = publish(tmp, target_path)
    return OptimizeReport(str(source), str(target_path), target, precision, applied, before, op_counts(model),
                          file_bytes(source), written, records, seconds)


def _own_error(exc: BaseException) -> BaseException:
    """The pass manager wraps errors twice; surface ours (one clear line) when it is the cause."""
    cause = exc
    while cause is not None and not isinstance(cause, MheEdgeError):
        cause = cause.__cause__ or cause.__context__
    return cause if cause is not None else ModelFileError(f"a graph pass failed: {exc}")


def _fp16_io(io_json: str) -> str:
    import json

    layout = json.loads(io_json)
    layout["float_dtype"] = "float16"
    return json.dumps(layout)
