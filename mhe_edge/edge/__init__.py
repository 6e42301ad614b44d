"""Artifacts for apps: the ONNX Runtime mobile (.ort) format, its reduced-build operator config, and
folders that onnxruntime-genai runs."""
from mhe_edge.edge.genai import genai_greedy, package_genai
from mhe_edge.edge.ort_format import OPTIMIZATION_LEVELS, read_required_operators, to_ort

__all__ = ["OPTIMIZATION_LEVELS", "genai_greedy", "package_genai", "read_required_operators", "to_ort"]
