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

A tied head (`MatMul(x, Transpose(E))`, E the embedding table) is quantized too: the head becomes a
MatMulNBits of E's transpose and the table's Gather a GatherBlockQuantized, and no float32 copy of E is
left. By default each has its own 4-bit copy. With `share_tied_table` the table reads the head's packed
bytes and scales (both quantize each row of E in blocks along the width, so it reads exactly the head's
dequantized weights): the file holds one copy, but ONNX Runtime cannot then free those bytes once it has
prepacked the head, so a session holds as much more (measured at Qwen2-0.5B's shape: 85 MB smaller
file, 65 MB larger process). Where the head has zero points (asymmetric, HQQ) or the width is not a
multiple of the block size, the table keeps its own copy.

For "rtn" and "hqq" the weights are quantized one node at a time by the quantizer's own per-node
quantizers, each weight read from the file when its node comes and dropped after: the pass never holds
more than the 4-bit result and one float32 weight. "k-quant" and "gptq" run on the whole model in memory
(the quantizer's way for them), so their peak is the float32 weights held twice.

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
from mhe_edge.passes._graph import GraphRefused, proto_with_weights
from mhe_edge.passes.int4_nodes import quantize_node
from mhe_edge.passes.int4_tied import tables_from_heads, tied_heads, untie_heads
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


class QuantizeInt4Pass(ir.passes.InPlacePass):
    def __init__(
        self,
        block_size: int = 32,
        symmetric: bool = True,
        accuracy_level: int = 4,
        algorithm: str = "rtn",
        calibration_ids: list[np.ndarray] | None = None,
        share_tied_table: bool = False,
    ):
        super().__init__()
        self.share_tied_table = share_tied_table
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
        if not (
            _quantizable(model) or tied_heads(model) or _quantizable_tables(model.graph, set())
        ):
            raise GraphRefused(
                "no MatMul with a float32 weight to quantize (is the graph float16 or already quantized?)"
            )

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        heads = untie_heads(model)  # head output name -> its table's name
        previous = logging.root.manager.disable
        logging.disable(logging.WARNING)  # the quantizer logs every node it visits
        try:
            with warnings.catch_warnings():
                # HQQ warns about reading a read-only array through torch
                warnings.simplefilter("ignore")
                if self.algorithm in ("rtn", "hqq"):
                    matmuls = self._node_quantizer(self.algorithm)
                    for node in _quantizable(model):
                        quantize_node(model.graph, node, matmuls)
                else:  # the quantizer's whole-model algorithms: their graph replaces the model's
                    proto = proto_with_weights(model)
                    proto = self._quantize(proto, ("MatMul",), self._algorithm_config(model))
                    quantized = ir.serde.deserialize_model(proto)
                    del proto
                    model.graph, model.ir_version = quantized.graph, quantized.ir_version
                served = tables_from_heads(
                    model.graph, heads, self.block_size, self.share_tied_table
                )
                # the other tables by round-to-nearest: GatherBlockQuantized takes no float zero points
                tables = self._node_quantizer("rtn")
                for node in _quantizable_tables(model.graph, served):
                    quantize_node(model.graph, node, tables)
                _drop_unused_initializers(model.graph)
        finally:
            logging.disable(previous)
        model.opset_imports.setdefault(MS_DOMAIN, 1)
        _int4_needs_ir10(model)
        modified = any(n.op_type in ("MatMulNBits", "GatherBlockQuantized") for n in model.graph)
        return ir.passes.PassResult(model, modified=modified)

    def _node_quantizer(self, algorithm: str):
        """The quantizer's own per-node quantizer for `algorithm` ("rtn" or "hqq")."""
        _import_quantizer()
        from onnxruntime.quantization import matmul_nbits_quantizer as nbits

        if algorithm == "hqq":
            return nbits.HQQWeightOnlyQuantizer(
                nbits.HQQWeightOnlyQuantConfig(
                    block_size=self.block_size, bits=4, op_types_to_quantize=("MatMul",)
                )
            )
        return nbits.DefaultWeightOnlyQuantizer(
            nbits.DefaultWeightOnlyQuantConfig(
                block_size=self.block_size,
                is_symmetric=self.symmetric,
                accuracy_level=self.accuracy_level,
                op_types_to_quantize=("MatMul", "Gather"),
                quant_axes=(("MatMul", 0), ("Gather", 1)),
                bits=4,
            )
        )

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


def _quantizable_tables(graph: ir.Graph, shared: set[str]) -> list[ir.Node]:
    """Gathers (axis 0) of a 2-D float32 constant table not already reading a head's 4-bit weight."""
    found = []
    for node in graph:
        if node.op_type != "Gather" or node.domain != "" or node.attributes.get_int("axis"):
            continue
        table = node.inputs[0]
        tensor = None if table is None else ir.convenience.get_const_tensor(table)
        if (
            table is not None
            and table.name not in shared
            and tensor is not None
            and tensor.dtype == ir.DataType.FLOAT
            and len(tensor.shape) == 2
        ):
            found.append(node)
    return found


def _drop_unused_initializers(graph: ir.Graph) -> None:
    inputs = set(graph.inputs)
    for name, value in list(graph.initializers.items()):
        if not value.uses() and not value.is_graph_output() and value not in inputs:
            graph.initializers.pop(name)


def _int4_needs_ir10(model: ir.Model) -> None:
    """int4 tensors are IR version 10 (opset 21) types; the quantizer raises both when it writes them."""
    if any(
        v.dtype in (ir.DataType.INT4, ir.DataType.UINT4) for v in model.graph.initializers.values()
    ):
        model.ir_version = max(model.ir_version or 0, 10)
        if model.opset_imports.get("", 0) < 21:
            model.opset_imports[""] = 21
