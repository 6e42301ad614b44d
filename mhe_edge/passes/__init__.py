"""Graph passes over onnx_ir: fold MHE head embeddings, lower to ONNX Runtime kernels or basic ops, clean up,
precision, older opsets; and the optimize pipeline that chains them per target."""

from mhe_edge.passes.pipeline import OptimizeReport, optimize
from mhe_edge.passes.targets import TARGETS, build_passes

__all__ = ["TARGETS", "OptimizeReport", "build_passes", "optimize"]
