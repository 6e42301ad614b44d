"""How much of a model ONNX Runtime's mobile execution providers can take: the share of nodes that NNAPI
(Android) and CoreML (iOS; ML Program) would run, by ONNX Runtime's own usability checker, on the graph as
ONNX Runtime's basic optimizations leave it. The rest runs on the CPU provider, with copies between."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

from mhe_edge.files import read_header
from mhe_edge.sessions import quiet_ort_tools

PROVIDERS = {"nnapi": None, "coreml": "coreml_supported_mlprogram_ops.md"}


def mobile_coverage(model: str | os.PathLike, fixed_shapes: bool = False) -> dict[str, Any]:
    """{"nnapi": {...}, "coreml": {...}}: nodes, supported nodes, their share, partitions and unsupported ops.
    `fixed_shapes=False` counts what the providers take with the model's dynamic axes as they are."""
    from onnxruntime.tools.mobile_helpers import usability_checker as checker

    path = Path(model)
    read_header(path)  # vetted like every input
    with quiet_ort_tools(), tempfile.TemporaryDirectory() as tmp:
        basic = Path(tmp) / "basic.onnx"
        checker.optimize_model(path, basic, use_external_initializers=True)
        graph = checker.ModelProtoWithShapeInfo(basic).model_with_shape_info
        infos = {
            "nnapi": checker.check_nnapi_partitions(graph, fixed_shapes),
            "coreml": checker.check_coreml_partitions(graph, fixed_shapes, PROVIDERS["coreml"]),
        }
    return {
        name: {
            "nodes": info.num_nodes,
            "supported_nodes": info.num_supported_nodes,
            "share": info.num_supported_nodes / info.num_nodes if info.num_nodes else 0.0,
            "partitions": info.num_partitions,
            "unsupported_ops": sorted(info.unsupported_ops),
        }
        for name, info in infos.items()
    }
