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

A tied head (`MatMul(x, Transpose(E))`, E the embedding table) is quantized too: the transpose becomes a
constant first, so the head is a MatMulNBits and E a GatherBlockQuantized, and no float32 copy of the
table is left (two 4-bit copies, a quarter of the float32 table, instead of the table plus one).

`algorithm` is the quantizer's: "rtn" (ONNX Runtime's block-wise round-to-nearest, the default), "hqq"
(half-quadratic, zero points always), "k-quant" (k-means-like scale search), "gptq" (error-compensating,
from the activations of `calibration_ids`: rows of token ids run through the model with an empty
cache). Embedding tables are always quantized by round-to-nearest: ONNX Runtime's
GatherBlockQuantized takes no float zero points (HQQ's).
"""

from __future__ import annotations

import contextlib
import io
import logging
import warnings

import numpy as np
import onnx_ir as ir

from mhe_edge.contract import MS_DOMAIN
from mhe_edge.errors import RequestError
from mhe_edge.passes._graph import GraphRefused, add_initializer, proto_with_weights
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


ALGORITHMS = ("rtn", "hqq", "k-quant", "gptq")
ACCURACY_LEVELS = (
    0,
    1,
    2,
    3,
    4,
)  # MatMulNBits' compute type: 0 unset, 1 fp32, 2 fp16, 3 bf16, 4 int8


class QuantizeInt4Pass(ir.passes.FunctionalPass):
    def __init__(
        self,
        block_size: int = 32,
        symmetric: bool = True,
        accuracy_level: int = 4,
        algorithm: str = "rtn",
        calibration_ids: list[np.ndarray] | None = None,
    ):
        super().__init__()
        if block_size not in BLOCK_SIZES:
            raise GraphRefused(
                f"int4 block size must be one of {', '.join(map(str, BLOCK_SIZES))}, not {block_size}"
            )
        if algorithm not in ALGORITHMS:
            raise RequestError(
                f"int4 algorithm must be one of {', '.join(ALGORITHMS)}, not {algorithm!r}"
            )
        if accuracy_level not in ACCURACY_LEVELS:
            raise RequestError(f"int4 accuracy level must be 0 to 4, not {accuracy_level}")
        if algorithm == "gptq" and not calibration_ids:
            raise RequestError(
                "int4 algorithm gptq needs calibration text (--int4-calibration-text)"
            )
        if calibration_ids and algorithm != "gptq":
            raise RequestError("calibration text is for int4 algorithm gptq")
        self.calibration_ids = calibration_ids or []
        self.block_size, self.symmetric = block_size, symmetric
        self.accuracy_level, self.algorithm = accuracy_level, algorithm

    def requires(self, model: ir.Model) -> None:
        if not _quantizable(model) and not _tied_heads(model):
            raise GraphRefused(
                "no MatMul with a float32 weight to quantize (is the graph float16 or already quantized?)"
            )

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        _untie_heads(model)
        previous = logging.root.manager.disable
        logging.disable(logging.WARNING)  # the quantizer logs every node it visits
        try:
            with warnings.catch_warnings():
                # HQQ warns about reading a read-only array through torch
                warnings.simplefilter("ignore")
                proto = proto_with_weights(model)
                if self.algorithm == "rtn":
                    proto = self._quantize(proto, ("MatMul", "Gather"), None)
                else:  # MatMuls by the chosen algorithm, then the embedding tables by round-to-nearest
                    proto = self._quantize(proto, ("MatMul",), self._algorithm_config(model))
                    proto = self._quantize(proto, ("Gather",), None)
                result = ir.serde.deserialize_model(proto)
        finally:
            logging.disable(previous)
        result.metadata_props.update(model.metadata_props)
        result.opset_imports.setdefault(MS_DOMAIN, 1)
        modified = any(n.op_type in ("MatMulNBits", "GatherBlockQuantized") for n in result.graph)
        return ir.passes.PassResult(result, modified=modified)

    def _algorithm_config(self, model: ir.Model):
        from onnxruntime.quantization import matmul_nbits_quantizer as nbits

        if self.algorithm == "gptq":
            return nbits.GPTQWeightOnlyQuantConfig(
                calibration_data_reader=_Feeds(
                    [_feeds(model, ids) for ids in self.calibration_ids]
                ),
                op_types_to_quantize=("MatMul",),
            )
        if self.algorithm == "hqq":
            return nbits.HQQWeightOnlyQuantConfig(
                block_size=self.block_size, bits=4, op_types_to_quantize=("MatMul",)
            )
        return nbits.KQuantWeightOnlyQuantConfig(op_types_to_quantize=("MatMul",))

    def _quantize(self, proto, op_types, algo_config):
        MatMulNBitsQuantizer = _import_quantizer()
        quantizer = MatMulNBitsQuantizer(
            proto,
            bits=4,
            block_size=self.block_size,
            is_symmetric=self.symmetric,
            accuracy_level=self.accuracy_level,
            op_types_to_quantize=op_types,
            quant_axes=(("MatMul", 0), ("Gather", 1)),
            algo_config=algo_config,
        )
        with contextlib.redirect_stdout(io.StringIO()):  # k-quant draws a progress bar on stdout
            quantizer.process()
        model = quantizer.model
        return model.model if hasattr(model, "model") else model  # ONNXModel, or a bare ModelProto


class _Feeds:
    """ONNX Runtime's CalibrationDataReader protocol over a list of feeds (GPTQ copies it per pass)."""

    def __init__(self, rows: list[dict]):
        self.rows = rows
        self._next = iter(rows)

    def get_next(self) -> dict | None:
        return next(self._next, None)

    def __iter__(self):
        return iter(self.rows)

    def __deepcopy__(self, memo):
        return _Feeds(self.rows)


def _feeds(model: ir.Model, ids: np.ndarray) -> dict[str, np.ndarray]:
    """Inputs for one calibration row: the ids, a mask of ones, an empty cache; anything else refused."""
    feeds: dict[str, np.ndarray] = {}
    for value in model.graph.inputs:
        name = value.name or ""
        if name == "input_ids":
            feeds[name] = ids.astype(np.int64)
        elif name == "attention_mask":
            feeds[name] = np.ones_like(ids, dtype=np.int64)
        elif name.startswith("past_key_values.") and value.shape is not None:
            _, heads, _, size = value.shape
            if not isinstance(heads, int) or not isinstance(size, int):
                raise GraphRefused(f"gptq needs {name}'s heads and head size fixed")
            dtype = np.float16 if value.dtype == ir.DataType.FLOAT16 else np.float32
            feeds[name] = np.zeros((ids.shape[0], heads, 0, size), dtype)
        else:
            raise GraphRefused(f"gptq cannot calibrate a graph with input {name!r}")
    return feeds


def _tied_heads(model: ir.Model) -> list[tuple[ir.Node, ir.Node]]:
    """(MatMul, Transpose) pairs where the MatMul's weight is a 2-D float32 initializer transposed."""
    pairs = []
    for node in model.graph:
        if node.op_type != "MatMul" or node.domain != "" or node.inputs[1] is None:
            continue
        producer = node.inputs[1].producer()
        if producer is None or producer.op_type != "Transpose" or producer.domain != "":
            continue
        perm = producer.attributes.get("perm")
        source = producer.inputs[0]
        tensor = None if source is None else ir.convenience.get_const_tensor(source)
        if (
            tensor is not None
            and tensor.dtype == ir.DataType.FLOAT
            and len(tensor.shape) == 2
            and (perm is None or list(perm.as_ints()) == [1, 0])
        ):
            pairs.append((node, producer))
    return pairs


def _untie_heads(model: ir.Model) -> None:
    """Give each tied head its own constant weight (E transposed), so the quantizer sees a MatMul it can
    take; the Transpose goes once nothing reads it."""
    graph = model.graph
    for matmul, transpose in _tied_heads(model):
        table = transpose.inputs[0]
        tensor = None if table is None else ir.convenience.get_const_tensor(table)
        if table is None or tensor is None:  # _tied_heads only returns constant tables
            continue
        weight = np.ascontiguousarray(tensor.numpy().T)
        matmul.replace_input_with(1, add_initializer(graph, f"{table.name}_transposed", weight))
        if not transpose.outputs[0].uses() and not transpose.outputs[0].is_graph_output():
            graph.remove(transpose, safe=True)
