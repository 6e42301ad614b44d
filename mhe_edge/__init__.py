"""mhe-edge: ship MHE-attention transformers to the edge through ONNX and ONNX Runtime.

The public Python API; every function mirrors a CLI command, takes keyword options named like its flags,
and returns a typed result whose `to_dict()` is exactly what the command's `--json` prints:

    import mhe_edge

    mhe_edge.init_model("model.pt", attention="mhe-mul", preset="tiny")
    exported = mhe_edge.export("model.pt", "model.onnx")                 # ExportReport
    optimized = mhe_edge.optimize("model.onnx", target="ort")            # OptimizeReport -> model.opt.onnx
    print(mhe_edge.generate("model.opt.onnx", [3, 1, 4], max_new_tokens=8).tokens)
    print(mhe_edge.profile("model.opt.onnx", seq_len=64).latency_ms)      # ProfileReport
    print(mhe_edge.compare(preset="tiny", seq_lens=[32]).rows)            # CompareReport

    mhe_edge.train("my-model", attention="mhe-mul", options=mhe_edge.TrainOptions(steps=300))  # TrainReport
    mhe_edge.export("my-model", "my-model.onnx")                         # carries the tokenizer
    print(mhe_edge.generate_text("my-model.onnx", "The ").generations[0].text)
    print(mhe_edge.evaluate(["my-model", "my-model.onnx"]).rows)         # EvalReport: bits per byte

Errors are `mhe_edge.MheEdgeError` subclasses with one-line messages. Names are imported lazily: the runtime
and the profiler (ONNX Runtime only) never pay for importing torch, which would also inflate the memory
figures they report.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_LAZY = {
    # the public API: one function per command
    "init_model": "mhe_edge.workflows.build",
    "load_model": "mhe_edge.models.checkpoint",
    "save_model": "mhe_edge.models.checkpoint",
    "describe": "mhe_edge.inspection",
    "export": "mhe_edge.exporters.onnx_export",
    "export_and_optimize": "mhe_edge.workflows.build",
    "optimize": "mhe_edge.passes.pipeline",
    "generate": "mhe_edge.runtime.driver",
    "profile": "mhe_edge.runtime.profiler",
    "compare": "mhe_edge.workflows.compare",
    "to_ort": "mhe_edge.edge.ort_format",
    "package": "mhe_edge.workflows.package",
    "fold": "mhe_edge.workflows.fold",
    "train": "mhe_edge.training.workflow",
    "tokenize": "mhe_edge.training.tokenize",
    "evaluate": "mhe_edge.workflows.evaluate",
    "convert": "mhe_edge.workflows.convert",
    "generate_text": "mhe_edge.runtime.text_generation",
    # building blocks
    "TrainOptions": "mhe_edge.training.loop",
    "SamplingOptions": "mhe_edge.text.sampling",
    "load_tokenizer": "mhe_edge.text.tokenizer",
    "ModelConfig": "mhe_edge.config",
    "preset_config": "mhe_edge.config",
    "build_model": "mhe_edge.models.transformer",
    "save_checkpoint": "mhe_edge.models.checkpoint",
    "count_parameters": "mhe_edge.accounting",
    "kv_cache_bytes": "mhe_edge.accounting",
    "kv_cache_bytes_per_token": "mhe_edge.accounting",
    "ExportedModel": "mhe_edge.runtime.driver",
    # errors and results
    "MheEdgeError": "mhe_edge.errors",
    "ExportReport": "mhe_edge.exporters.onnx_export",
    "ExportOptimizeReport": "mhe_edge.workflows.build",
    "OptimizeReport": "mhe_edge.passes.pipeline",
    "ProfileReport": "mhe_edge.runtime.profiler",
    "GenerateResult": "mhe_edge.runtime.driver",
    "CompareReport": "mhe_edge.workflows.compare",
    "ToOrtReport": "mhe_edge.edge.ort_format",
    "PackageReport": "mhe_edge.workflows.package",
    "FoldReport": "mhe_edge.workflows.fold",
    "Description": "mhe_edge.inspection",
    "InitReport": "mhe_edge.workflows.build",
    "TrainReport": "mhe_edge.training.workflow",
    "TokenizeReport": "mhe_edge.training.tokenize",
    "EvalReport": "mhe_edge.workflows.evaluate",
    "ConvertReport": "mhe_edge.workflows.convert",
    "TextGenerationReport": "mhe_edge.runtime.text_generation",
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'mhe_edge' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
