"""mhe-edge: ship MHE-attention transformers to the edge through ONNX and ONNX Runtime."""
__version__ = "0.1.0"

from mhe_edge.accounting import count_parameters, kv_cache_bytes, kv_cache_bytes_per_token
from mhe_edge.checkpoint import load_model, save_checkpoint
from mhe_edge.config import ModelConfig, preset_config
from mhe_edge.errors import MheEdgeError
from mhe_edge.models import build_model

__all__ = [
    "ModelConfig",
    "MheEdgeError",
    "__version__",
    "build_model",
    "count_parameters",
    "kv_cache_bytes",
    "kv_cache_bytes_per_token",
    "load_model",
    "preset_config",
    "save_checkpoint",
]
