"""ConvertToOpsetPass: make a graph valid at an older default-domain opset (17-22) and IR version, so older
runtimes (ONNX Runtime 1.16+, onnxruntime-node, OpenVINO) load it. onnx's version converter cannot
lower the standard Attention op and drops model functions, so this is our own, narrow conversion:

- Gelu (opset 20) -> its Erf form, or its Tanh form for approximate="tanh";
- RMSNormalization (opset 23) -> x / sqrt(mean(x^2) + eps) * scale;
- with `basic_norms`, LayerNormalization too (NNAPI and CoreML have no kernel for it: written out, the
  mobile providers take those nodes instead of handing them to the CPU);
- Reduce* ops: axes as an input (opset 18+; ReduceSum's since 13) -> the attribute, below that;
- then every remaining op must exist at the target opset (Attention must be decomposed first).
Preconditions: no functions, no mhe_edge nodes; the target between 17 and the graph's own opset.
"""

from __future__ import annotations

import math

import numpy as np
import onnx
import onnx_ir as ir

from mhe_edge.contract import OLDEST_IR_VERSION, OLDEST_OPSET
from mhe_edge.passes._graph import (
    GraphRefused,
    NewNodes,
    TargetRefused,
    add_initializer,
    constant_array,
    ints,
)

REDUCE_OPS = {
    "ReduceMean",
    "ReduceSum",
    "ReduceMax",
    "ReduceMin",
    "ReduceProd",
    "ReduceSumSquare",
    "ReduceL1",
    "ReduceL2",
    "ReduceLogSum",
    "ReduceLogSumExp",
}
AXES_INPUT_SINCE = {"ReduceSum": 13}  # the opset where axes became an input; 18 for the rest


class ConvertToOpsetPass(ir.passes.InPlacePass):
    def __init__(
        self,
        opset: int,
        ir_version: int = OLDEST_IR_VERSION,
        other_domains: tuple[str, ...] = (),
        basic_norms: bool = False,
    ):
        super().__init__()
        self.opset, self.ir_version, self.other_domains, self.basic_norms = (
            opset,
            ir_version,
            other_domains,
            basic_norms,
        )

    def requires(self, model: ir.Model) -> None:
        current = model.opset_imports.get("", 0)
        if not OLDEST_OPSET <= self.opset <= current:
            raise TargetRefused(
                f"opset {self.opset} is not one this model can be converted to ({OLDEST_OPSET} to {current})"
            )
        if model.functions:
            raise GraphRefused(
                "the graph holds functions (an unfolded MHE export?); fold or inline them first"
            )
        others = sorted(
            {n.domain for n in model.graph if n.domain not in ("", "ai.onnx", *self.other_domains)}
        )
        if others:
            raise GraphRefused(f"the graph uses the {others[0]} domain, which this target cannot")
        converted = {"Gelu", "RMSNormalization"}
        missing = sorted(
            {
                n.op_type
                for n in model.graph
                if n.domain in ("", "ai.onnx")
                and n.op_type not in converted
                and not _exists(n.op_type, self.opset)
            }
        )
        if missing:
            raise GraphRefused(
                f"{', '.join(missing)} has no form at opset {self.opset} (decompose it first)"
            )

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        graph = model.graph
        # modified: a node rewritten, or the opset or IR version lowered
        modified = (
            model.opset_imports.get("") != self.opset
        ) or model.ir_version != self.ir_version
        for node in list(graph):
            rewritten = True
            if node.op_type == "Gelu" and self.opset < 20:
                self._replace(graph, node, self._gelu)
            elif node.op_type == "RMSNormalization" and (self.opset < 23 or self.basic_norms):
                self._replace(graph, node, self._rms_norm)
            elif node.op_type == "LayerNormalization" and self.basic_norms:
                self._replace(graph, node, self._layer_norm)
            elif (
                node.op_type in REDUCE_OPS
                and self.opset < AXES_INPUT_SINCE.get(node.op_type, 18)
                and len(node.inputs) > 1
                and node.inputs[1] is not None
            ):
                axes = constant_array(node.inputs[1], f"{node.op_type} axes")
                node.attributes["axes"] = ir.AttrInt64s(
                    "axes", [int(a) for a in np.atleast_1d(axes)]
                )
                node.replace_input_with(1, None)
                node.resize_inputs(1)
            else:
                rewritten = False
            modified |= rewritten
        model.opset_imports[""] = self.opset
        model.ir_version = self.ir_version
        return ir.passes.PassResult(model, modified=modified)

    def ensures(self, model: ir.Model) -> None:
        """The model declares the target opset and IR version, and no op newer than them is left."""
        if model.opset_imports.get("") != self.opset or model.ir_version != self.ir_version:
            raise ir.passes.PostconditionError("the opset or IR version was not lowered")
        newer = {n.op_type for n in model.graph if n.op_type in ("Gelu", "RMSNormalization")}
        if (self.opset < 20 and "Gelu" in newer) or (
            self.opset < 23 and "RMSNormalization" in newer
        ):
            raise ir.passes.PostconditionError(f"{sorted(newer)} left at opset {self.opset}")

    @staticmethod
    def _replace(graph: ir.Graph, node: ir.Node, build) -> None:
        new_nodes = NewNodes()
        output = build(graph, node, new_nodes.emit)
        ir.convenience.replace_nodes_and_values(
            graph, node, [node], new_nodes, [node.outputs[0]], [output]
        )

    def _gelu(self, graph, node, emit):
        x = node.inputs[0]
        approximate = node.attributes.get("approximate")
        prefix = (node.name or "gelu").replace("/", "_")

        dtype = np.float16 if x.dtype == ir.DataType.FLOAT16 else np.float32

        def const(name, value):
            return add_initializer(graph, f"{prefix}_{name}", np.array(value, dtype))

        half, one = const("half", 0.5), const("one", 1.0)
        if (
            approximate is not None and approximate.as_string() == "tanh"
        ):  # 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))
            cube = emit("Mul", [emit("Mul", [x, x]), x])
            inner = emit(
                "Mul",
                [
                    const("sqrt_2_over_pi", math.sqrt(2 / math.pi)),
                    emit("Add", [x, emit("Mul", [const("c", 0.044715), cube])]),
                ],
            )
            return emit("Mul", [emit("Mul", [half, x]), emit("Add", [one, emit("Tanh", [inner])])])
        erf = emit(
            "Erf", [emit("Mul", [x, const("inv_sqrt2", 1 / math.sqrt(2))])]
        )  # 0.5 x (1 + erf(x / sqrt 2))
        return emit("Mul", [emit("Mul", [half, x]), emit("Add", [one, erf])])

    def _rms_norm(self, graph, node, emit):
        """x / sqrt(mean(x^2) + eps) * scale."""
        return self._norm(graph, node, emit, centred=False)

    def _layer_norm(self, graph, node, emit):
        """(x - mean) / sqrt(var + eps) * scale + bias."""
        return self._norm(graph, node, emit, centred=True)

    def _norm(self, graph, node, emit, centred: bool):
        x, scale = node.inputs[0], node.inputs[1]
        bias = node.inputs[2] if len(node.inputs) > 2 else None
        axis = node.attributes["axis"].as_int() if node.attributes.get("axis") is not None else -1
        if axis != -1:
            raise GraphRefused(f"{node.op_type} over axes other than the last is not converted")
        eps = (
            node.attributes["epsilon"].as_float()
            if node.attributes.get("epsilon") is not None
            else 1e-5
        )
        prefix = (node.name or "norm").replace("/", "_")
        original, widened = x, x.dtype != ir.DataType.FLOAT
        if widened:  # statistics in float32, as the ops' stash_type does
            x = emit("Cast", [x], {"to": ir.DataType.FLOAT})

        def mean_of(value):
            if self.opset < 18:
                return emit("ReduceMean", [value], {"axes": [-1], "keepdims": 1})
            return emit(
                "ReduceMean", [value, ints(graph, f"{prefix}_last_axis", [-1])], {"keepdims": 1}
            )

        if centred:
            x = emit("Sub", [x, mean_of(x)])
        eps_value = add_initializer(
            graph, f"{prefix}_eps", np.array(eps, np.float32)
        )  # x is float32 here
        normalized = emit(
            "Div", [x, emit("Sqrt", [emit("Add", [mean_of(emit("Mul", [x, x])), eps_value])])]
        )
        if widened:
            normalized = emit("CastLike", [normalized, original])
        out = emit("Mul", [normalized, scale])
        return emit("Add", [out, bias]) if bias is not None else out


def _exists(op_type: str, opset: int) -> bool:
    try:
        onnx.defs.get_schema(op_type, opset, "")
        return True
    except onnx.defs.SchemaError:
        return False
