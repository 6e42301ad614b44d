"""The I/O contract of an mhe-edge ONNX file: metadata keys, input and output names, their layouts, how a
present becomes the next past, and the `mhe_edge` operator domain. Nothing else lives here.

Every part reads the contract from this module: the exporter writes it, the passes keep it, the runtime
(like an app in C++) drives a file from it alone. Its only dependency is the model config it describes.
"""

from __future__ import annotations

import json
from typing import Any

from mhe_edge.config import ModelConfig

# --- metadata_props keys
KEY_VERSION = "mhe_edge.version"  # the mhe-edge version that wrote the file
KEY_CONFIG = "mhe_edge.config"  # ModelConfig as JSON
KEY_ATTENTION = "mhe_edge.attention"  # the attention kind, e.g. "mhe-mul"
KEY_IO = "mhe_edge.io"  # the I/O layout below, as JSON
KEY_GRAPH = (
    "mhe_edge.graph"  # what produced the graph: "export", then "+optimize(...)" per pass run
)
KEY_TARGET = "mhe_edge.target"  # the optimize target ("std", "ort"); absent on a plain export
KEY_PRECISION = "mhe_edge.precision"  # "fp32", "fp16" or "int8"
KEY_OPSET = "mhe_edge.opset"  # the default-domain opset of the graph
KEY_MIN_ORT = "mhe_edge.min_onnxruntime"  # the oldest ONNX Runtime that loads the file, e.g. "1.20"
KEY_QUERY_SEQLENS = (
    "mhe_edge.ort_query_seqlens"  # "1": GroupQueryAttention takes batched chunks with a past
)
KEY_TOKENIZER = (
    "mhe_edge.tokenizer"  # the model's tokenizer.json, verbatim (absent for random-weight models)
)
KEY_TEXT = "mhe_edge.training_text"  # JSON: the corpus a trained model learned from (eval rebuilds its held-out text)

# --- the fused MHE operator (an ONNX function stored in the file)
DOMAIN = "mhe_edge"
OP_TYPES = {
    "add": "MHEAttentionAdd",
    "mul": "MHEAttentionMul",
}  # one function per MHE mode, chosen at export
MODES = {op_type: mode for mode, op_type in OP_TYPES.items()}
DOMAIN_VERSION = 1
MS_DOMAIN = "com.microsoft"  # ONNX Runtime's contrib operators (GroupQueryAttention)
MIN_EXPORT_OPSET = 23  # the first default-domain opset with the standard Attention operator
# The oldest ONNX Runtime that loads a file of each default-domain opset (measured: benchmarks/compat.py for
# 17-23; ORT 1.23 refuses opset 24, 1.24 runs 24 and 25).
MIN_ORT_FOR_OPSET = {
    17: "1.16",
    18: "1.16",
    19: "1.16",
    20: "1.17",
    21: "1.20",
    22: "1.20",
    23: "1.23",
    24: "1.24",
    25: "1.24",
}
MAX_EXPORT_OPSET = 25  # the newest the PyTorch exporter's graphs pass the full ONNX checker at (26+: no Gelu-18 there)

# The oldest opset and IR version a pass can rewrite a file to: what ONNX Runtime 1.16 reads (measured)
OLDEST_OPSET, OLDEST_IR_VERSION = 17, 8

# --- I/O names
INPUT_IDS, ATTENTION_MASK = "input_ids", "attention_mask"
LOGITS, LAST_HIDDEN_STATE = "logits", "last_hidden_state"
PAST_KEY, PAST_VALUE = "past_key_values.{i}.key", "past_key_values.{i}.value"
PRESENT_KEY, PRESENT_VALUE = "present.{i}.key", "present.{i}.value"
PAST_PREFIX, PRESENT_PREFIX = "past_key_values.", "present."


def past_names(n_layers: int) -> list[str]:
    """past_key_values.0.key, past_key_values.0.value, past_key_values.1.key, ..."""
    return [t.format(i=i) for i in range(n_layers) for t in (PAST_KEY, PAST_VALUE)]


def present_names(n_layers: int) -> list[str]:
    return [t.format(i=i) for i in range(n_layers) for t in (PRESENT_KEY, PRESENT_VALUE)]


def present_for(past_name: str) -> str:
    """The output that feeds `past_name` at the next step: past_key_values.3.key -> present.3.key."""
    if not past_name.startswith(PAST_PREFIX):
        raise ValueError(f"{past_name!r} is not a past cache name")
    return PRESENT_PREFIX + past_name[len(PAST_PREFIX) :]


def input_names(config: ModelConfig) -> list[str]:
    """Encoders: ids and mask. Decoders: ids, the mask over past + new tokens, then the cache (as Optimum's)."""
    if config.arch == "encoder":
        return [INPUT_IDS, ATTENTION_MASK]
    return [INPUT_IDS, ATTENTION_MASK, *past_names(config.n_layers)]


def output_names(config: ModelConfig) -> list[str]:
    if config.arch == "encoder":
        return [LAST_HIDDEN_STATE]
    return [LOGITS, *present_names(config.n_layers)]


def io_layout(config: ModelConfig, dtype: str = "float32") -> dict[str, Any]:
    """Everything an app needs to feed the model: names, shapes (symbolic), dtypes, the cache."""
    layout: dict[str, Any] = {
        "arch": config.arch,
        "inputs": input_names(config),
        "outputs": output_names(config),
        INPUT_IDS: {"dtype": "int64", "shape": ["batch", "sequence"]},
        "float_dtype": dtype,
        "max_seq_len": config.max_seq_len,
        "vocab_size": config.vocab_size,
    }
    if config.arch == "encoder":
        layout[ATTENTION_MASK] = {
            "dtype": "int64",
            "shape": ["batch", "sequence"],
            "meaning": "1 attend, 0 padding",
        }
        layout[LAST_HIDDEN_STATE] = {"shape": ["batch", "sequence", config.d_model]}
    else:
        layout[ATTENTION_MASK] = {
            "dtype": "int64",
            "shape": ["batch", "past_sequence + sequence"],
            "meaning": "1 for a token (past or new), 0 for padding; a token's position is the count of 1s before it."
            " Each step appends a 1 per row. --target ort files need right padding (as onnxruntime-genai pads)",
        }
        layout[LOGITS] = {"shape": ["batch", "sequence", config.vocab_size]}
        layout["kv_cache"] = {
            "num_layers": config.n_layers,
            "kv_heads": config.kv_heads,
            "head_dim": config.head_dim,
            "past_key": PAST_KEY,
            "past_value": PAST_VALUE,
            "present_key": PRESENT_KEY,
            "present_value": PRESENT_VALUE,
            "past_shape": ["batch", config.kv_heads, "past_sequence", config.head_dim],
            "present_shape": [
                "batch",
                config.kv_heads,
                "past_sequence + sequence",
                config.head_dim,
            ],
            "start": "a past of length 0 starts a generation; feed each present back as the next past",
        }
    return layout


def metadata(
    config: ModelConfig,
    version: str,
    graph: str,
    opset: int,
    min_onnxruntime: str,
    dtype: str = "float32",
) -> dict[str, str]:
    """The metadata_props an export carries."""
    return {
        KEY_OPSET: str(opset),
        KEY_MIN_ORT: min_onnxruntime,
        KEY_VERSION: version,
        KEY_CONFIG: json.dumps(config.to_dict()),
        KEY_ATTENTION: config.attention,
        KEY_IO: json.dumps(io_layout(config, dtype)),
        KEY_GRAPH: graph,
    }
