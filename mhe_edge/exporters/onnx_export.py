"""`export`: checkpoint -> validated ONNX file, with the steps reported as they run."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mhe_edge import contract, options
from mhe_edge.errors import ExportError, RequestError, first_line
from mhe_edge.files import (
    check_full,
    check_output,
    file_bytes,
    op_counts,
    save_ir_model,
    staged_output,
)
from mhe_edge.files.rewriter_state import let_go_of_graph
from mhe_edge.models import Transformer
from mhe_edge.options import check_all
from mhe_edge.progress import timed_steps
from mhe_edge.results import json_safe
from mhe_edge.sessions import create_session
from mhe_edge.verification import (
    ParityChecked,
    ParityRecord,
    compare_runners,
    ort_runner,
    raise_on_failures,
    recorded_runner,
    torch_runner,
)


@dataclass
class ExportReport(ParityChecked):
    path: str
    source: str
    config: dict[str, Any]
    opset: int
    external_data: bool
    file_bytes: int
    op_counts: dict[str, int]
    parity: list[ParityRecord] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return json_safe(
            {
                "path": self.path,
                "source": self.source,
                "config": self.config,
                "opset": self.opset,
                "external_data": self.external_data,
                "file_bytes": self.file_bytes,
                "op_counts": self.op_counts,
                "max_abs_diff": self.max_abs_diff,
                "parity": [r.to_dict() for r in self.parity],
                "seconds": self.seconds,
                "total_seconds": self.total_seconds,
            }
        )


def supported_opsets() -> range:
    import onnx

    return range(
        contract.MIN_EXPORT_OPSET,
        min(contract.MAX_EXPORT_OPSET, onnx.defs.onnx_opset_version()) + 1,
    )


def export(
    model: Transformer | str | os.PathLike,
    output: str | os.PathLike | None = None,
    *,
    opset: int = options.OPSET.default,
    atol: float = options.ATOL.default,
    rtol: float = options.RTOL.default,
    external_data: bool = False,
    force: bool = False,
    tokenizer: str | os.PathLike | None = None,
    on_step: Callable[[str], None] | None = None,
) -> ExportReport:
    """Export a model (or a checkpoint path) to ONNX and check it against PyTorch.

    Nothing appears at `output` unless the full ONNX check and the parity check (ONNX Runtime vs PyTorch
    within `atol + rtol * scale` per output, scale being PyTorch's largest magnitude there) pass; raises
    an `MheEdgeError` subclass otherwise. Weights go to `OUTPUT.data` with `external_data`, and by
    themselves past the protobuf limit. The tokenizer (a model folder's own `tokenizer.json`, or
    `tokenizer`) travels in the file's metadata, so `generate --text` works on the
    file alone; so does a trained folder's record of its training text, for `eval`.

    Example: `mhe_edge.export("model.pt", "model.onnx").max_abs_diff`
    """
    check_all((options.OPSET, opset), (options.ATOL, atol), (options.RTOL, rtol))
    if opset not in supported_opsets():  # the installed onnx may know fewer opsets than mhe-edge
        raise RequestError(
            f"opset {opset} is not supported by the installed onnx: use {contract.MIN_EXPORT_OPSET}"
            f" (the first with the standard Attention op) to {supported_opsets()[-1]}"
        )
    from_path = isinstance(model, (str, os.PathLike))
    model_path = Path(model) if isinstance(model, (str, os.PathLike)) else None
    if output is None:
        if model_path is None:
            raise RequestError("give an output path when exporting a model object")
        output = model_path.with_suffix(".onnx")
    target = check_output(
        output, force=force, suffixes=(".onnx",), inputs=[model_path] if model_path else []
    )
    seconds: dict[str, float] = {}
    step = timed_steps(seconds, on_step)

    with step("load"):
        source = "<module>"
        if isinstance(model, (str, os.PathLike)):
            from mhe_edge.models import load_model

            source = str(model)
            model = load_model(model)
        model.eval()
        config = model.config
        _check_export_fits(config)
        carried = _carried_text(source if from_path else None, tokenizer)
    with step("trace"):
        from mhe_edge.exporters.tracing import attach_mhe_function, trace

        try:
            ir_model = trace(model, opset)
        except (
            Exception
        ) as exc:  # torch.export raises many classes; the first line says what went wrong
            raise ExportError(f"tracing failed: {first_line(exc)}") from exc
    with step("attach functions"):
        from mhe_edge import __version__

        attach_mhe_function(ir_model, opset)
        ir_model.metadata_props.update(
            contract.metadata(
                config,
                __version__,
                graph="export",
                opset=opset,
                min_onnxruntime=contract.MIN_ORT_FOR_OPSET[opset],
            )
        )
        ir_model.metadata_props.update(carried)
        _check_fused_nodes(ir_model, config)
        ops = op_counts(ir_model.graph)
    with staged_output(target, force=force) as staged:
        with step("check"):
            external = save_ir_model(ir_model, staged, external_data or None)
            check_full(staged)
        with step("validate"):
            # PyTorch's answers first; then the graph and a model loaded here are dropped, so ONNX Runtime
            # loads the weights into a process that no longer holds them twice
            reference = recorded_runner(config, torch_runner(model))
            weight_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
            del ir_model
            if from_path:
                del model
            let_go_of_graph(weight_bytes)  # modules and traced graphs hold reference cycles
            records = compare_runners(
                config,
                ort_runner(create_session(staged, "cpu", checking=True)),
                reference,
                atol,
                rtol=rtol,
            )
            raise_on_failures(records, "ONNX Runtime disagrees with PyTorch")
        size = file_bytes(staged)
    return ExportReport(
        str(target),
        source,
        config.to_dict(),
        opset,
        external,
        size,
        ops,
        records,
        seconds,
    )


def _check_fused_nodes(ir_model, config) -> None:
    """One fused attention node per layer, or the export is not what it claims to be."""
    fused = [
        n
        for n in ir_model.graph
        if (n.domain == contract.DOMAIN and n.op_type in contract.MODES)
        or (n.domain, n.op_type) == ("", "Attention")
    ]
    if len(fused) != config.n_layers:
        raise ExportError(f"expected {config.n_layers} fused attention nodes, traced {len(fused)}")


def _check_export_fits(config) -> None:
    """Refuse (exit 2) before tracing an export whose copies of the weights (the traced graph, the
    serialized file, the ONNX Runtime session of the parity check) and check runs exceed the memory left."""
    from mhe_edge.accounting import check_fits, inference_memory

    parts = inference_memory(config, 2, min(config.max_seq_len, 16))
    weights = parts.pop("weights")
    parts.update({"traced weights": weights, "serialized file": weights, "session": weights})
    check_fits(
        parts,
        f"exporting this model ({config.n_layers} layers of width {config.d_model})",
        "export on a machine with more memory",
    )


def _carried_text(source: str | None, tokenizer: str | os.PathLike | None) -> dict[str, str]:
    """Metadata for the text side: the tokenizer (checked by loading it) and the training-text record."""
    import json

    from mhe_edge.errors import CheckpointError
    from mhe_edge.text.corpus import read_training_record
    from mhe_edge.text.tokenizer import TOKENIZER_FILE, load_tokenizer

    carried: dict[str, str] = {}
    folder = Path(source) if source is not None and Path(source).is_dir() else None
    if tokenizer is not None:  # asked for: it must load
        carried[contract.KEY_TOKENIZER] = load_tokenizer(tokenizer).to_json()
    elif folder is not None and (folder / TOKENIZER_FILE).is_file():
        try:
            carried[contract.KEY_TOKENIZER] = load_tokenizer(folder).to_json()
        except CheckpointError:
            # a folder from elsewhere (a Llama tokenizer without <|endoftext|>): the export still works, without text
            pass
    try:
        record = read_training_record(folder) if folder is not None else None
    except (
        CheckpointError
    ):  # a damaged record only costs eval its default text; eval then asks for --text
        record = None
    if record is not None:
        carried[contract.KEY_TEXT] = json.dumps(record["corpus"])
    return carried
