"""Run mhe-edge ONNX files on ONNX Runtime, as an app would: from the file and its metadata alone
(no models, exporters or passes are imported here)."""

from mhe_edge.runtime.driver import ExportedModel, parse_prompt
from mhe_edge.sessions import PROVIDERS, create_session

__all__ = ["PROVIDERS", "ExportedModel", "create_session", "parse_prompt"]
