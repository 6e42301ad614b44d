"""DynamicQuantizeInt8Pass: ONNX Runtime's dynamic quantization of MatMul weights to int8.

Weights are stored as int8 with a scale; activations are quantized on the fly per call. I/O stays float32.
Attention and LayerNorm stay in float (ONNX Runtime's quantizer only touches MatMul here).
Precondition: at least one MatMul with a float32 constant weight (float16 graphs are refused: the
quantizer takes float32). `modified` says whether any MatMul was quantized.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import onnx_ir as ir

from mhe_edge.passes._graph import GraphRefused
from mhe_edge.sessions import quiet_ort_tools


def _quantizable(model: ir.Model) -> list[ir.Node]:
    def float_weight(value):
        tensor = None if value is None else ir.convenience.get_const_tensor(value)
        return tensor is not None and tensor.dtype == ir.DataType.FLOAT and len(tensor.shape) == 2

    return [
        n
        for n in model.graph
        if n.op_type == "MatMul" and n.domain == "" and float_weight(n.inputs[1])
    ]


class DynamicQuantizeInt8Pass(ir.passes.FunctionalPass):
    def requires(self, model: ir.Model) -> None:
        if not _quantizable(model):
            raise GraphRefused(
                "no MatMul with a float32 weight to quantize (is the graph float16 or already quantized?)"
            )

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        from onnxruntime.quantization import QuantType, quantize_dynamic

        # the quantizer logs advice about static pre-processing to the root logger
        with quiet_ort_tools(), tempfile.TemporaryDirectory() as tmp:
            quantized = Path(tmp) / "int8.onnx"
            quantize_dynamic(
                ir.to_proto(model),
                quantized,
                op_types_to_quantize=["MatMul"],
                weight_type=QuantType.QInt8,
            )
            result = ir.load(quantized)
        result.metadata_props.update(model.metadata_props)
        modified = any(
            n.op_type in ("MatMulInteger", "DynamicQuantizeLinear") for n in result.graph
        )
        return ir.passes.PassResult(result, modified=modified)
