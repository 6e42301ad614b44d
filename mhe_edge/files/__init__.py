"""Files in one place: reading and vetting ONNX headers, file sizes, and the one writing path for outputs."""

from mhe_edge.files.onnx_model import (
    EXTERNAL_DATA_THRESHOLD,
    EXTERNAL_DATA_THRESHOLD_TEXT,
    OnnxHeader,
    check_full,
    file_bytes,
    initializer_bytes,
    load_onnx_header,
    op_counts,
    read_header,
    save_ir_model,
)
from mhe_edge.files.writing import FOLDER_MARKER, check_output, scratch_folder, staged_output

__all__ = [
    "EXTERNAL_DATA_THRESHOLD",
    "EXTERNAL_DATA_THRESHOLD_TEXT",
    "FOLDER_MARKER",
    "OnnxHeader",
    "check_full",
    "check_output",
    "file_bytes",
    "initializer_bytes",
    "load_onnx_header",
    "op_counts",
    "read_header",
    "save_ir_model",
    "scratch_folder",
    "staged_output",
]
