"""ONNX export: the fused MHE function op, KV-cache I/O, metadata and parity validation."""
from mhe_edge.exporters.export import STEPS, ExportReport, export

__all__ = ["STEPS", "ExportReport", "export"]
