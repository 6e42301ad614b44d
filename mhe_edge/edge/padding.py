"""Left padding for `--target ort` files: what packages for clients that pad on the left (transformers.js,
Optimum) run. The rewrite itself is `passes/seqlens_from_mask.py`'s AnyPaddingFromAttentionMaskPass; here
the file's metadata is brought in line (the padding it takes, the oldest ONNX Runtime that loads it)."""

from __future__ import annotations

from packaging.version import Version

from mhe_edge.contract import KEY_GRAPH, KEY_MIN_ORT, KEY_PADDING, KEY_TARGET


def takes_left_padding(metadata: dict[str, str]) -> bool:
    """Whether a file gives each row of a left-padded batch the tokens that row gets alone."""
    return metadata.get(KEY_TARGET) != "ort" or metadata.get(KEY_PADDING) == "any"


def take_any_padding(ir_model) -> bool:
    """Rewrite an ort-target graph (onnx_ir) to take left and right padding; False if it already did."""
    from mhe_edge.passes.seqlens_from_mask import (
        MIN_ORT_ATTENTION_BIAS,
        AnyPaddingFromAttentionMaskPass,
    )

    metadata = ir_model.metadata_props
    if takes_left_padding(metadata):
        return False
    AnyPaddingFromAttentionMaskPass()(ir_model)
    metadata[KEY_PADDING] = "any"
    metadata[KEY_MIN_ORT] = max(
        metadata.get(KEY_MIN_ORT, MIN_ORT_ATTENTION_BIAS), MIN_ORT_ATTENTION_BIAS, key=Version
    )
    metadata[KEY_GRAPH] = metadata.get(KEY_GRAPH, "export") + "+any_padding"
    return True
