"""ONNX Runtime sessions and drivers for mhe-edge exports."""
from mhe_edge.runtime.session import PROVIDERS, create_session

__all__ = ["PROVIDERS", "create_session"]
