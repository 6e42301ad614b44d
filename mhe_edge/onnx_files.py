"""Writing ONNX files safely: stage in a temporary folder beside the target, check, then rename into place."""
from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import Iterator

from mhe_edge.errors import ExportError

EXTERNAL_DATA_THRESHOLD = 1_800_000_000  # protobuf cannot hold 2 GB; leave room for the graph itself


def op_counts(ir_model) -> dict[str, int]:
    """Nodes of the main graph by `domain.op_type` (the default domain unprefixed), sorted."""
    from collections import Counter

    counts = Counter(f"{n.domain}.{n.op_type}" if n.domain else n.op_type for n in ir_model.graph)
    return dict(sorted(counts.items()))


def initializer_bytes(ir_model) -> int:
    return sum(v.const_value.nbytes for v in ir_model.graph.initializers.values() if v.const_value is not None)


def save_ir_model(ir_model, path: Path, external: bool | None = None) -> None:
    """Save; external data when asked, or automatically when the weights pass the protobuf limit."""
    import onnx_ir as ir

    if external is None:
        external = initializer_bytes(ir_model) > EXTERNAL_DATA_THRESHOLD
    ir.save(ir_model, path, external_data=f"{path.name}.data" if external else None)


def check_full(path: Path) -> None:
    import onnx

    try:
        onnx.checker.check_model(str(path), full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as exc:
        raise ExportError(f"the ONNX checker rejects the graph: {str(exc).strip().splitlines()[0][:300]}") from None


@contextlib.contextmanager
def staged(target: Path) -> Iterator[Path]:
    """A path in a temporary folder beside `target`; whatever is not published is deleted on exit."""
    with tempfile.TemporaryDirectory(prefix=f".{target.name}.", dir=target.parent) as tmp_dir:
        yield Path(tmp_dir) / target.name


def publish(tmp: Path, target: Path) -> int:
    """Move a finished model (its external data first) from the staging folder to `target`; returns bytes."""
    data = tmp.with_name(tmp.name + ".data")
    total = tmp.stat().st_size
    if data.exists():
        total += data.stat().st_size
        os.replace(data, target.with_name(target.name + ".data"))
    os.replace(tmp, target)
    return total


def file_bytes(path: Path) -> int:
    data = path.with_name(path.name + ".data")
    return path.stat().st_size + (data.stat().st_size if data.exists() else 0)
