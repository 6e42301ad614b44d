"""Clean-up: constant folding, onnxscript's default rewrites, dead nodes/initializers/functions/opsets,
identity removal, per-node exporter metadata (stack traces: bloat on a device), shape inference.
All of it is onnxscript's and onnx_ir's own machinery; the model's own metadata_props are kept."""

from __future__ import annotations

import onnx_ir as ir
import onnx_ir.passes.common as common
import onnxscript.optimizer

from mhe_edge.passes._graph import signature


class CleanupPass(ir.passes.InPlacePass):
    """No precondition: any valid graph can be cleaned. `modified` compares the graph's signature."""

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        before = signature(model)
        # inline=False: a surviving mhe_edge function node is meant to stay fused.
        onnxscript.optimizer.optimize_ir(model, inline=False)
        common.IdentityEliminationPass()(model)
        common.RemoveUnusedNodesPass()(model)
        common.RemoveUnusedFunctionsPass()(model)
        common.RemoveUnusedOpsetsPass()(model)
        common.ClearMetadataAndDocStringPass()(
            model
        )  # nodes' and graphs' only; model.metadata_props stay
        common.ShapeInferencePass()(model)  # types and shapes only: not counted as a change
        return ir.passes.PassResult(model, modified=signature(model) != before)
