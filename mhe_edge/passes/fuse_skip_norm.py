"""FuseSkipRmsNormPass: a residual add feeding an RMSNormalization becomes one
`com.microsoft.SkipSimplifiedLayerNormalization` (ONNX Runtime's fused kernel, as onnxruntime-genai's model
builder writes it), whose fourth output is the sum the rest of the residual stream reads.

Pre-norm decoders add each sublayer's output to the stream and normalize the sum for the next sublayer:
`s = Add(a, b); y = RMSNormalization(s, scale)` -> `y, _, _, s = SkipSimplifiedLayerNormalization(a, b,
scale)`, its mean and inverse-deviation outputs unnamed, so the kernel does not write them. The first
norm of a block stack reads the embeddings, not a sum, and stays an RMSNormalization (ONNX Runtime's
SimplifiedLayerNormalization sits in the ONNX domain, where the ONNX checker rejects it).
Each candidate must hold: the norm over the last axis with fp32 statistics, its scale a 1-D constant, the
add's two inputs computed (not constants) with the same known rank-3 shape. `modified` says whether any
pair was fused. For `--target ort` only: the kernel is ONNX Runtime's.
"""

from __future__ import annotations

import onnx_ir as ir

from mhe_edge.contract import MS_DOMAIN

DEFAULT_EPSILON = 1e-5  # RMSNormalization's own default


def _fusable(norm: ir.Node) -> ir.Node | None:
    """The Add feeding `norm` when the pair can become one SkipSimplifiedLayerNormalization."""
    if norm.op_type != "RMSNormalization" or norm.domain not in ("", "ai.onnx"):
        return None
    axis = norm.attributes.get("axis")
    stash = norm.attributes.get("stash_type")
    if (axis is not None and axis.as_int() != -1) or (stash is not None and stash.as_int() != 1):
        return None
    scale = norm.inputs[1] if len(norm.inputs) > 1 else None
    tensor = None if scale is None else ir.convenience.get_const_tensor(scale)
    if tensor is None or len(tensor.shape) != 1:
        return None
    add = norm.inputs[0].producer() if norm.inputs[0] is not None else None
    if add is None or add.op_type != "Add" or add.domain not in ("", "ai.onnx"):
        return None
    a, b = add.inputs
    if a is None or b is None or a.const_value is not None or b.const_value is not None:
        return None
    if a.shape is None or b.shape is None or len(a.shape) != 3 or a.shape != b.shape:
        return None
    return add


class FuseSkipRmsNormPass(ir.passes.InPlacePass):
    def requires(self, model: ir.Model) -> None:
        pass  # any graph: pairs that do not fit are left as they are

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        graph = model.graph
        fused = 0
        for norm in [n for n in graph if _fusable(n) is not None]:
            add = _fusable(norm)
            if add is None:  # an earlier fusion took this add
                continue
            epsilon = norm.attributes.get("epsilon")
            eps = epsilon.as_float() if epsilon is not None else DEFAULT_EPSILON
            total = add.outputs[0]
            skip = ir.node(
                "SkipSimplifiedLayerNormalization",
                [add.inputs[0], add.inputs[1], norm.inputs[1]],
                {"epsilon": eps},
                domain=MS_DOMAIN,
                num_outputs=4,
                name=f"{norm.name or 'norm'}_skip",
            )
            normalized, _mean, _inv_std, summed = skip.outputs
            for new, old in ((normalized, norm.outputs[0]), (summed, total)):
                new.type, new.shape = old.type, old.shape
            graph.insert_after(add, skip)
            # nothing reads the statistics: unnamed, the kernel does not write them (about 20 us a norm
            # at decode, measured)
            _mean.name = _inv_std.name = ""
            norm.outputs[0].replace_all_uses_with(normalized, replace_graph_outputs=True)
            total.replace_all_uses_with(summed, replace_graph_outputs=True)
            for old, new in ((norm.outputs[0], normalized), (total, summed)):
                if new.is_graph_output():  # the graph keeps its output names
                    new.name, old.name = old.name, f"{old.name}_unfused"
            graph.remove([norm, add], safe=True)
            fused += 1
        if fused:
            model.opset_imports.setdefault(MS_DOMAIN, 1)
        return ir.passes.PassResult(model, modified=bool(fused))
