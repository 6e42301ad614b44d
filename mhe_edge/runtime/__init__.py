"""ONNX Runtime sessions and drivers for mhe-edge exports."""
from mhe_edge.runtime.session import PROVIDERS, create_session

__all__ = ["PROVIDERS", "create_session"]
from mhe_edge.runtime.driver import ExportedModel, parse_prompt

__all__ += ["ExportedModel", "parse_prompt"]
