"""QuantizeInt4Pass: weight-only 4-bit quantization of MatMul weights with ONNX Runtime's own quantizer
(`onnxruntime.quantization.matmul_nbits_quantizer`), which writes `com.microsoft.MatMulNBits` nodes.

Weights are stored as 4-bit integers in blocks of `block_size` along the input dimension, each block with
its own scale (and zero point when not symmetric); activations stay float, and ONNX Runtime's kernel
dequantizes on the fly (accuracy_level 4: int8 compute on CPU). It runs after folding and lowering, so the
folded MHE query constant and the output projection are quantized like any other weight. Embedding
tables (Gather) become `com.microsoft.GatherBlockQuantized`, blocks along the embedding width: in a small
model they are a third of the weights, and left in float32 they alone would keep the file above a third of
its fp32 size. Precondition: a MatMul with a float32 2-D constant weight whose input size is a
multiple of the block size. `modified` says whether any MatMul became MatMulNBits.
"""

from __future__ import annotations

import logging

import onnx_ir as ir

from mhe_edge.contract import MS_DOMAIN
from mhe_edge.passes._graph import GraphRefused, proto_with_weights
from mhe_edge.passes.quantize_int8 import _quantizable

BLOCK_SIZES = (16, 32, 64, 128, 256)


def _import_quantizer():
    """The quantizer's module calls logging.basicConfig(level=INFO) when imported, which would make every
    library's INFO messages print; import it with the root logger's setup kept as it was."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    try:
        from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)
    return MatMulNBitsQuantizer


class QuantizeInt4Pass(ir.passes.FunctionalPass):
    def __init__(self, block_size: int = 32, symmetric: bool = True, accuracy_level: int = 4):
        super().__init__()
        if block_size not in BLOCK_SIZES:
            raise GraphRefused(
                f"int4 block size must be one of {', '.join(map(str, BLOCK_SIZES))}, not {block_size}"
            )
        self.block_size, self.symmetric, self.accuracy_level = block_size, symmetric, accuracy_level

    def requires(self, model: ir.Model) -> None:
        if not _quantizable(model):
            raise GraphRefused(
                "no MatMul with a float32 weight to quantize (is the graph float16 or already quantized?)"
            )

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        MatMulNBitsQuantizer = _import_quantizer()

        previous = logging.root.manager.disable
        logging.disable(logging.WARNING)  # the quantizer logs every node it visits
        try:
            quantizer = MatMulNBitsQuantizer(
                proto_with_weights(model),
                bits=4,
                block_size=self.block_size,
                is_symmetric=self.symmetric,
                accuracy_level=self.accuracy_level,
                op_types_to_quantize=("MatMul", "Gather"),
                quant_axes=(("MatMul", 0), ("Gather", 1)),
            )
            quantizer.process()
            result = ir.serde.deserialize_model(quantizer.model.model)
        finally:
            logging.disable(previous)
        result.metadata_props.update(model.metadata_props)
        result.opset_imports.setdefault(MS_DOMAIN, 1)
        modified = any(n.op_type in ("MatMulNBits", "GatherBlockQuantized") for n in result.graph)
        return ir.passes.PassResult(result, modified=modified)
