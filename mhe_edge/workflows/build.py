"""Building models: a seeded random-weight checkpoint (`init`), and export followed by optimize."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from mhe_edge.accounting import count_parameters
from mhe_edge.config import preset_config
from mhe_edge.errors import RequestError, first_line
from mhe_edge.results import Result


@dataclass
class InitReport(Result):
    path: str
    config: dict[str, Any]
    parameters: dict[str, int]  # by component, and "total"


def init_model(
    path: str | os.PathLike,
    *,
    arch: str = "decoder",
    attention: str = "mhe-mul",
    preset: str = "tiny",
    seed: int = 0,
    force: bool = False,
    **overrides: Any,
) -> InitReport:
    """Build a seeded random-weight model from a preset (fields in `overrides` replace the preset's) and save
    it as `.pt`, `.safetensors` or (a path with no suffix) a model folder.

    Example: `mhe_edge.init_model("model.pt", attention="mhe-add", preset="tiny", n_layers=3)`
    """
    from mhe_edge.models import build_model, save_checkpoint
    from mhe_edge.models.checkpoint import check_checkpoint_output

    check_checkpoint_output(path, force=force)  # before building: a bad path costs nothing
    config = preset_config(preset, arch=arch, attention=attention, **overrides)
    try:
        model = build_model(config, seed=seed)
    except (
        MemoryError,
        RuntimeError,
    ) as exc:  # torch reports a failed allocation as a RuntimeError
        gigabytes = count_parameters(config)["total"] * 4 / 1e9
        raise RequestError(
            f"a model of {count_parameters(config)['total']:,} parameters ({gigabytes:.1f} GB in float32)"
            f" cannot be built here: {first_line(exc, 120)}"
        ) from exc
    saved = save_checkpoint(model, path, force=force)
    return InitReport(str(saved), config.to_dict(), count_parameters(config))


@dataclass
class ExportOptimizeReport(Result):
    exported: Any  # ExportReport
    optimized: Any | None  # OptimizeReport, when asked

    def to_dict(self) -> dict[str, Any]:
        """The export's report, with the optimize report (or None) under "optimized"."""
        return {
            **self.exported.to_dict(),
            "optimized": self.optimized.to_dict() if self.optimized else None,
        }


def export_and_optimize(
    model,
    output=None,
    *,
    optimize: bool = False,
    target: str | None = None,
    ort_query_seqlens: bool = False,
    force: bool = False,
    on_step: Callable[[str], None] | None = None,
    on_optimize_step: Callable[[str], None] | None = None,
    **export_options: Any,
):
    """`export`, then (with `optimize`) `optimize` its output to OUTPUT.opt.onnx. Returns both reports."""
    from pathlib import Path

    from mhe_edge.exporters import export
    from mhe_edge.files import check_output
    from mhe_edge.passes import build_passes
    from mhe_edge.passes import optimize as optimize_model

    if (target is not None or ort_query_seqlens) and not optimize:
        raise RequestError(
            "--target and --ort-query-seqlens choose how to optimize: add --optimize"
        )
    target = target or ("ort" if ort_query_seqlens else "std")
    if optimize:  # refuse before the export runs: an unknown target, or an optimize output that cannot be written
        build_passes(target, query_seqlens=ort_query_seqlens)
        exported_path = Path(output) if output is not None else Path(model).with_suffix(".onnx")
        check_output(
            exported_path.with_name(exported_path.stem + ".opt.onnx"),
            force=force,
            suffixes=(".onnx",),
        )
    exported = export(model, output, force=force, on_step=on_step, **export_options)
    optimized = None
    if optimize:
        optimized = optimize_model(
            exported.path,
            target=target,
            ort_query_seqlens=ort_query_seqlens,
            force=force,
            on_step=on_optimize_step,
        )
    return ExportOptimizeReport(exported, optimized)
