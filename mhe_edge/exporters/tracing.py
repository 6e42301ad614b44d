"""Trace a model to ONNX with torch.export, keeping MHE attention as one"
" `mhe_edge.MHEAttentionAdd`/`MHEAttentionMul` node per layer."""

from __future__ import annotations

import logging
import warnings
from typing import Any

import torch
from torch import nn

from mhe_edge.config import ModelConfig
from mhe_edge.contract import DOMAIN, DOMAIN_VERSION, MODES, input_names, output_names
from mhe_edge.exporters.cores import export_core
from mhe_edge.exporters.mhe_function import mhe_attention_function
from mhe_edge.files.rewriter_state import release_rewriter_state
from mhe_edge.models import Transformer, use_attention_core


class DecoderWithFlatCache(nn.Module):
    """The decoder with its cache as flat tensors: (input_ids, attention_mask, k0, v0, k1, v1,"
    " ...) -> (logits, k0', v0', ...)."""

    def __init__(self, model: Transformer):
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, *past: torch.Tensor):
        pairs = [(past[2 * i], past[2 * i + 1]) for i in range(len(past) // 2)]
        logits, present = self.model(input_ids, pairs, attention_mask=attention_mask)
        return (logits, *[t for kv in present for t in kv])


class EncoderWithMask(nn.Module):
    def __init__(self, model: Transformer):
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor):
        return self.model(input_ids, attention_mask)


def example_inputs(config: ModelConfig, batch: int = 2, seq: int = 3, past: int = 4):
    """Tracing inputs; sizes above 1 so torch.export does not specialise any dynamic axis."""
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(0, config.vocab_size, (batch, seq), generator=generator)
    if config.arch == "encoder":
        return (ids, torch.ones(batch, seq, dtype=torch.long))
    cache_shape = (batch, config.kv_heads, past, config.head_dim)
    mask = torch.ones(batch, past + seq, dtype=torch.long)
    mask[0, 0] = 0  # a padded row: nothing may assume an all-ones mask
    return (
        ids,
        mask,
        *[torch.randn(cache_shape, generator=generator) for _ in range(2 * config.n_layers)],
    )


def trace(model: Transformer, opset: int):
    """The traced graph as an onnx_ir Model; MHE layers are `mhe_edge.MHEAttention{Add,Mul}`"
    " nodes (see attach_mhe_function)."""
    config = model.config
    batch, seq = torch.export.Dim("batch"), torch.export.Dim("sequence")
    dynamic_shapes: tuple[Any, ...]
    if config.arch == "encoder":
        wrapper: nn.Module = EncoderWithMask(model)
        dynamic_shapes = ({0: batch, 1: seq}, {0: batch, 1: seq})
    else:
        wrapper = DecoderWithFlatCache(model)
        past = torch.export.Dim("past_sequence")
        total = torch.export.Dim.AUTO  # past_sequence + sequence: the exporter derives it
        dynamic_shapes = (
            {0: batch, 1: seq},
            {0: batch, 1: total},
            tuple({0: batch, 2: past} for _ in range(2 * config.n_layers)),
        )
    with _quiet_exporter(), use_attention_core(export_core), torch.no_grad():
        program = torch.onnx.export(
            wrapper.eval(),
            example_inputs(config),
            input_names=input_names(config),
            output_names=output_names(config),
            dynamic_shapes=dynamic_shapes,
            opset_version=opset,
            dynamo=True,
            optimize=True,
            verbose=False,
        )
    assert program is not None  # dynamo=True always returns the program
    ir_model = program.model
    release_rewriter_state()
    if config.arch == "decoder":
        _name_mask_length(ir_model)
    return ir_model


def _name_mask_length(ir_model) -> None:
    """The exporter names the mask's length with a fresh symbol; it is the presents' "past_sequence + sequence"."""
    import onnx_ir as ir

    mask = ir_model.graph.inputs[1]
    symbol = mask.shape[1] if mask.shape is not None else None
    if not isinstance(symbol, ir.SymbolicDim) or symbol.value is None:
        return
    total = "past_sequence + sequence"
    for value in [
        *ir_model.graph.inputs,
        *ir_model.graph.outputs,
        *(v for n in ir_model.graph for v in n.outputs),
    ]:
        if value.shape is not None and any(
            isinstance(d, ir.SymbolicDim) and d.value == symbol.value for d in value.shape
        ):
            value.shape = ir.Shape(
                [
                    total if isinstance(d, ir.SymbolicDim) and d.value == symbol.value else d
                    for d in value.shape
                ]
            )


def attach_mhe_function(ir_model, opset: int) -> None:
    """Store the definition of each MHE operator the graph uses, so any ONNX runtime runs the custom-domain
    nodes. The public exporter inlines functions it is given; emitting a symbolic node and attaching the
    FunctionProto afterwards keeps the fused node visible in the graph.
    """
    import onnx_ir as ir

    modes = sorted({MODES[n.op_type] for n in ir_model.graph if n.domain == DOMAIN})
    for mode in modes:
        function = ir.serde.deserialize_function(mhe_attention_function(mode, opset))
        ir_model.functions[function.identifier()] = function
    if modes:
        ir_model.opset_imports[DOMAIN] = DOMAIN_VERSION


class _quiet_exporter:
    """torch.onnx logs warnings users cannot act on (e.g. torchvision ops it skips); keep the terminal clean."""

    def __enter__(self):
        self._warnings = warnings.catch_warnings()
        self._warnings.__enter__()
        warnings.simplefilter("ignore")
        self._levels = {}
        for name in (
            "torch.onnx",
            "torch.export",
            "torch._dynamo",
            "torch.fx.experimental.symbolic_shapes",
            "onnxscript",
        ):
            logger = logging.getLogger(name)
            self._levels[name] = logger.level
            logger.setLevel(logging.ERROR)

    def __exit__(self, *exc):
        for name, level in self._levels.items():
            logging.getLogger(name).setLevel(level)
        self._warnings.__exit__(*exc)
        return False
