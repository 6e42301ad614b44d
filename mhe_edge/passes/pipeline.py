"""`optimize`: an mhe-edge export -> folded, lowered, cleaned (and optionally fp16/int8/int4) export, checked
against the input with ONNX Runtime before it is written."""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mhe_edge import options
from mhe_edge.contract import (
    KEY_GRAPH,
    KEY_IO,
    KEY_MIN_ORT,
    KEY_OPSET,
    KEY_PRECISION,
    KEY_QUERY_SEQLENS,
    KEY_TARGET,
)
from mhe_edge.errors import ExportError, MheEdgeError, ModelFileError, RequestError
from mhe_edge.files import (
    check_full,
    check_output,
    file_bytes,
    op_counts,
    read_header,
    save_ir_model,
    staged_output,
)
from mhe_edge.files.rewriter_state import let_go_of_graph
from mhe_edge.options import check_all
from mhe_edge.passes.targets import build_passes, check_target, min_onnxruntime
from mhe_edge.progress import timed_steps
from mhe_edge.results import json_safe
from mhe_edge.sessions import create_session
from mhe_edge.verification import (
    ParityChecked,
    ParityRecord,
    argmax_agreement,
    compare_runners,
    ort_runner,
    raise_on_failures,
    recorded_runner,
)

# fp16 without text to judge by: close to the input (per unit of each output's largest magnitude too)
FP16_ATOL, FP16_RTOL, FP16_MIN_ARGMAX = 1e-2, 1e-3, 0.99


@dataclass
class OptimizeReport(ParityChecked):
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
    quality: Any = None  # QualityCheck for lossy steps (fp16, int8): bits per byte before and after, or why not judged

    def to_dict(self) -> dict[str, Any]:
        return json_safe(
            {
                "input": self.input,
                "output": self.output,
                "target": self.target,
                "precision": self.precision,
                "passes": self.passes,
                "nodes": {
                    "before": sum(self.op_counts_before.values()),
                    "after": sum(self.op_counts_after.values()),
                },
                "op_counts": {"before": self.op_counts_before, "after": self.op_counts_after},
                "bytes": {"before": self.bytes_before, "after": self.bytes_after},
                "max_abs_diff": self.max_abs_diff,
                "argmax_agreement": argmax_agreement(self.parity),
                "parity": [r.to_dict() for r in self.parity],
                "seconds": self.seconds,
                "quality": self.quality.to_dict() if self.quality is not None else None,
            }
        )


def optimize(
    source: str | os.PathLike,
    output: str | os.PathLike | None = None,
    *,
    target: str = "std",
    fp16: bool = False,
    int8: bool = False,
    int4: bool = False,
    int4_block_size: int = 32,
    int4_symmetric: bool = True,
    int4_accuracy_level: int = 4,
    int4_algorithm: str = "rtn",
    int4_calibration_text: Sequence[str | os.PathLike] | None = None,
    int4_share_tied_table: bool = False,
    opset: int | None = None,
    ort_query_seqlens: bool = False,
    atol: float = options.ATOL.default,
    rtol: float = options.RTOL.default,
    force: bool = False,
    eval_text: Sequence[str | os.PathLike] | None = None,
    max_quality_loss: float | None = None,
    allow_quality_loss: bool = False,
    on_step: Callable[[str], None] | None = None,
) -> OptimizeReport:
    """Run the passes on an mhe-edge export and write the result if ONNX Runtime agrees with the input:
    fp32 within `atol + rtol * scale` per output (scale: the input's largest magnitude there). Lossy
    steps (fp16, int8, int4: ONNX Runtime's MatMulNBits, `int4_block_size` weights per scale, symmetric
    unless `int4_symmetric=False`, compute per `int4_accuracy_level`, weights by `int4_algorithm`: rtn,
    hqq, k-quant or gptq (calibrated on `int4_calibration_text` files, tokenized by the model's own
    tokenizer); the tied head and the embedding table included, one 4-bit copy for both with
    `int4_share_tied_table`) are judged on text: for a model that
    carries a tokenizer (a trained folder's export) the held-out text's bits per byte before and after, refused beyond
    `max_quality_loss` (default per step: text/quality.py) unless `allow_quality_loss`; `eval_text` files
    replace the held-out text. A random-weight model's quality cannot be judged (the report says so); its
    fp16 file must still agree within 1e-2 with the same argmax on 99% of positions.
    The output defaults to MODEL.opt.onnx; an input already optimized for another target is refused. `opset`
    (ort: 17-21, portable: 17-22) and `ort_query_seqlens` (batched chunked prefill with a past; ONNX Runtime
    1.32+) shape what runtimes can load it: see passes/targets.py.

    Example: `mhe_edge.optimize("model.onnx", target="ort").op_counts_after`
    """
    import onnx_ir as ir

    check_all(
        (options.TARGET, target),
        (options.TARGET_OPSET, opset),
        (options.INT4_BLOCK_SIZE, int4_block_size),
        (options.INT4_ACCURACY_LEVEL, int4_accuracy_level),
        (options.INT4_ALGORITHM, int4_algorithm),
        (options.ATOL, atol),
        (options.RTOL, rtol),
        (options.MAX_QUALITY_LOSS, max_quality_loss),
    )
    source = Path(source)
    calibration = _calibration_ids(source, int4_calibration_text) if int4_calibration_text else None
    passes = build_passes(
        target,
        fp16,
        int8,
        opset,
        ort_query_seqlens,
        int4,
        int4_block_size,
        int4_symmetric,
        int4_accuracy_level,
        int4_algorithm,
        calibration,
        int4_share_tied_table,
    )
    opset = check_target(target, opset, ort_query_seqlens)
    default = source.with_name(source.stem + ".opt.onnx")
    header = read_header(source)
    inputs = [
        source,
        *(source.parent / name for name in header.external_files),
    ]  # never written over, even with --force
    target_path = check_output(
        output if output is not None else default, force=force, suffixes=(".onnx",), inputs=inputs
    )
    seconds: dict[str, float] = {}
    step = timed_steps(seconds, on_step)
    with step("load"):
        if header.target not in (None, target):
            raise RequestError(
                f"{source.name} is already optimized for target {header.target}; optimize its export instead"
            )
        io = header.io
        try:
            check_full(source)
        except ExportError as exc:
            raise ModelFileError(f"{source.name} is malformed: {exc}") from exc
        model = ir.load(source)
        before = op_counts(model.graph)
    with step("passes"):
        try:
            model = ir.passes.PassManager(passes)(
                model
            ).model  # functional passes (int8) return a new model
        except ir.passes.PassError as exc:
            raise _own_error(exc) from exc
        precision = "fp16" if fp16 else "int8" if int8 else "int4" if int4 else header.precision
        applied = [type(p).__name__ for p in passes]
        model.metadata_props[KEY_GRAPH] = (
            f"{header.graph}+optimize(target={target},precision={precision})"
        )
        model.metadata_props[KEY_TARGET] = target
        model.metadata_props[KEY_PRECISION] = precision
        model.metadata_props[KEY_OPSET] = str(opset)
        model.metadata_props[KEY_MIN_ORT] = min_onnxruntime(target, opset, ort_query_seqlens, int4)
        if ort_query_seqlens:
            model.metadata_props[KEY_QUERY_SEQLENS] = "1"
        if fp16:
            model.metadata_props[KEY_IO] = json.dumps({**io, "float_dtype": "float16"})
    with staged_output(target_path, force=force) as staged:
        with step("check"):
            # weights stay external when the input's were (and always past the protobuf limit)
            save_ir_model(model, staged, True if header.external_files else None)
            check_full(staged)
            after = op_counts(model.graph)
            del model  # its weights are on disk now; the sessions below load their own
            let_go_of_graph(header.parameter_bytes)
        with step("validate"):
            records, quality = _validate(
                header,
                source,
                staged,
                precision if fp16 or int8 or int4 else None,
                batched=target != "ort" or ort_query_seqlens,
                atol=atol,
                rtol=rtol,
                eval_text=eval_text,
                max_quality_loss=max_quality_loss,
                allow_quality_loss=allow_quality_loss,
            )
        written = file_bytes(staged)
    return OptimizeReport(
        str(source),
        str(target_path),
        target,
        precision,
        applied,
        before,
        after,
        header.file_bytes,
        written,
        records,
        seconds,
        quality,
    )


def _validate(
    header,
    source: Path,
    staged: Path,
    lossy: str | None,
    *,
    batched: bool,
    atol: float,
    rtol: float,
    eval_text,
    max_quality_loss: float | None,
    allow_quality_loss: bool,
):
    """The optimized file against its input on ONNX Runtime: the parity records and, for a lossy step,
    the quality check. The input's answers (and its bits per byte) are taken first and its session freed
    before the optimized file loads: a large model's process holds one file's weights at a time."""
    config = header.config
    gate = None
    if lossy is not None:
        from mhe_edge.text.quality import quality_gate

        gate = quality_gate(
            lossy, config, header.metadata, eval_text=eval_text, max_loss=max_quality_loss
        )
    source_session = create_session(source, "cpu", checking=True)
    reference = recorded_runner(config, ort_runner(source_session), batched_chunks=batched)
    base = gate.score(source_session) if gate is not None else None
    del source_session
    staged_session = create_session(staged, "cpu", checking=True)
    candidate = ort_runner(staged_session)

    def check(atol, **options):
        return compare_runners(
            config, candidate, reference, atol, batched_chunks=batched, **options
        )

    quality = None
    if gate is not None:
        quality = gate.verdict(base, gate.score(staged_session), allow_quality_loss)
    if lossy == "fp16" and quality is not None and not quality.judged:
        # no text to judge by: the numbers must stay close
        records = check(FP16_ATOL, rtol=FP16_RTOL, min_argmax_agreement=FP16_MIN_ARGMAX)
        raise_on_failures(records, "the fp16 model disagrees with its input")
    elif (
        lossy is not None
    ):  # quantization error is expected; quality was judged on text (or cannot be)
        records = check(float("inf"))
    else:
        records = check(atol, rtol=rtol)
        raise_on_failures(records, "the optimized model disagrees with its input")
    return records, quality


CALIBRATION_ROWS, CALIBRATION_TOKENS = 16, 128  # GPTQ's sample: at most 16 windows of 128 tokens


def _calibration_ids(source: Path, files: Sequence[str | os.PathLike]) -> list:
    """Token windows of the calibration text, by the export's own tokenizer (a refusal without one)."""
    import numpy as np

    from mhe_edge.text.quality import read_eval_text
    from mhe_edge.text.tokenizer import tokenizer_of_export

    header = read_header(source)
    tokenizer = tokenizer_of_export(header.metadata, source.name)
    if tokenizer is None:
        raise RequestError(
            f"{source.name} carries no tokenizer, so calibration text cannot be read for it"
        )
    ids = tokenizer.encode(read_eval_text(files))
    length = min(CALIBRATION_TOKENS, header.config.max_seq_len)
    rows = [ids[i : i + length] for i in range(0, len(ids) - length + 1, length)]
    if not rows:
        raise RequestError(f"the calibration text holds fewer than {length} tokens")
    return [np.array([row], dtype=np.int64) for row in rows[:CALIBRATION_ROWS]]


def _own_error(exc: BaseException) -> BaseException:
    """The pass manager wraps errors twice; surface ours (one clear line) when it is the cause."""
    cause: BaseException | None = exc
    while cause is not None and not isinstance(cause, MheEdgeError):
        cause = cause.__cause__ or cause.__context__
    return cause if cause is not None else ModelFileError(f"a graph pass failed: {exc}")
