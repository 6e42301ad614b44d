"""Small onnx_ir helpers shared by the passes, and the errors a pass's precondition raises."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from mhe_edge.errors import ModelFileError, RequestError


class GraphRefused(ModelFileError, ir.passes.PreconditionError):
    """A graph the pass cannot handle; raised by `requires`, before the graph is touched. Being a
    PreconditionError, onnx_ir's pass machinery lets it through unwrapped."""


class TargetRefused(RequestError, ir.passes.PreconditionError):
    """A model the requested target cannot take (e.g. a head size a fused kernel refuses)."""


def proto_with_weights(model: ir.Model):
    """The model as a ModelProto holding every weight in memory. onnx_ir reads external data from the
    model's own folder; a proto that still pointed at `MODEL.onnx.data` would be resolved by ONNX Runtime's
    quantizers against the current directory, and pick up whatever file of that name is there."""
    ir.external_data.load_to_model(
        model
    )  # tensors stay the same values: only where they live changes
    return ir.to_proto(model)


def signature(model: ir.Model) -> tuple:
    """What a clean-up can change, cheaply: nodes (type, inputs, outputs), initializers, functions, opsets,
    per-node metadata. Equal before and after means the pass changed nothing."""
    nodes = tuple(
        (
            n.domain,
            n.op_type,
            tuple(v.name if v is not None else "" for v in n.inputs),
            tuple(v.name for v in n.outputs),
            bool(n.metadata_props),
            n.doc_string is not None,
        )
        for n in ir.traversal.RecursiveGraphIterator(model.graph)
    )
    return (
        nodes,
        tuple(model.graph.initializers),
        tuple(model.functions),
        tuple(sorted(model.opset_imports.items())),
    )


def constant_array(value: ir.Value | None, what: str) -> np.ndarray:
    """The numpy value of an initializer or Constant output, or a clear refusal."""
    tensor = None if value is None else ir.convenience.get_const_tensor(value)
    if tensor is None:
        raise GraphRefused(
            f"{what} ({value.name if value is not None else 'missing'}) is not a constant; cannot fold"
        )
    return tensor.numpy()


def free_name(graph: ir.Graph, base_name: str) -> str:
    """`base_name`, or where an initializer already has it, the first free `base_name_k`."""
    name, k = base_name, 0
    while name in graph.initializers:
        k += 1
        name = f"{base_name}_{k}"
    return name


def register_tensor(graph: ir.Graph, tensor) -> ir.Value:
    """A new initializer for `tensor`, under its name or, where that is taken, a free variant of it."""
    tensor.name = free_name(graph, tensor.name)
    value = ir.Value(
        name=tensor.name,
        shape=ir.Shape(tensor.shape),  # its own: a pass may refine the value's shape
        type=ir.TensorType(tensor.dtype),
        const_value=tensor,
    )
    graph.register_initializer(value)
    return value


def add_initializer(graph: ir.Graph, base_name: str, array: np.ndarray) -> ir.Value:
    """Register `array` as a new initializer with a name not yet used in the graph."""
    return register_tensor(graph, ir.tensor(array, name=base_name))


def add_concatenated_initializer(
    graph: ir.Graph, base_name: str, arrays: list[np.ndarray], axis: int
) -> ir.Value:
    """Register the concatenation of `arrays` as a new initializer, computed only when the tensor is
    read (on writing, most often): a pass that packs every layer's weights then never holds all the
    packed copies beside the originals at once."""
    shape = list(arrays[0].shape)
    shape[axis] = sum(a.shape[axis] for a in arrays)
    tensor = ir.LazyTensor(
        lambda: ir.tensor(np.concatenate(arrays, axis=axis)),
        dtype=ir.DataType.from_numpy(arrays[0].dtype),
        shape=ir.Shape(shape),
        name=base_name,
    )
    return register_tensor(graph, tensor)


def sole_consumer(value: ir.Value, op_type: str) -> ir.Node | None:
    """The single node reading `value`, if it is one `op_type` node and the value is not a graph output."""
    consumers = value.consumers()
    if (
        len(consumers) != 1
        or value.is_graph_output()
        or consumers[0].op_type != op_type
        or consumers[0].domain != ""
    ):
        return None
    return consumers[0]


def ints(graph: ir.Graph, base_name: str, values: list[int]) -> ir.Value:
    return add_initializer(graph, base_name, np.asarray(values, dtype=np.int64))


def input_of(node: ir.Node, index: int) -> ir.Value:
    """The node's input at `index`, or a refusal when that optional input is absent."""
    value = node.inputs[index] if index < len(node.inputs) else None
    if value is None:
        raise GraphRefused(f"{node.name or node.op_type} has no input {index}")
    return value


class NewNodes(list):
    """The nodes a rewrite creates, in order, for `ir.convenience.replace_nodes_and_values`.
    `emit` creates one and returns its output (its outputs, when it has several)."""

    def emit(self, op_type: str, inputs, attributes=None, domain: str = "", num_outputs: int = 1):
        node = ir.node(op_type, inputs, attributes, domain=domain, num_outputs=num_outputs)
        self.append(node)
        return node.outputs[0] if num_outputs == 1 else node.outputs
