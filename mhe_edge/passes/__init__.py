"""Graph passes over onnx_ir: fold MHE head embeddings, lower to ONNX Runtime kernels, clean up, precision."""
from mhe_edge.passes.pipeline import TARGETS, OptimizeReport, build_passes, optimize

__all__ = ["TARGETS", "OptimizeReport", "build_passes", "optimize"]
