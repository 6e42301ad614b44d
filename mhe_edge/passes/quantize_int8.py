"""DynamicQuantizeInt8Pass: ONNX Runtime's dynamic quantization of MatMul weights to int8.

Weights are stored as int8 with a scale; activations are quantized on the fly per call. I/O stays float32.
Attention and LayerNorm stay in float (ONNX Runtime's quantizer only touches MatMul here).
"""
from __future__ import annotations

import logging
import tempfile
from pathlib import Path

import onnx_ir as ir


class DynamicQuantizeInt8Pass(ir.passes.FunctionalPass):
    def call(self, model: ir.Model) -> ir.passes.PassResult:
        from onnxruntime.quantization import QuantType, quantize_dynamic

        previous = logging.root.manager.disable
        logging.disable(logging.WARNING)  # the quantizer logs advice about static pre-processing to the root logger
        try:
            with tempfile.TemporaryDirectory() as tmp:
                quantized = Path(tmp) / "int8.onnx"
                quantize_dynamic(ir.to_proto(model), quantized, op_types_to_quantize=["MatMul"], weight_type=QuantType.QInt8)
                result = ir.load(quantized)
        finally:
            logging.disable(previous)
        result.metadata_props.update(model.metadata_props)
        return ir.passes.PassResult(result, modified=True)
