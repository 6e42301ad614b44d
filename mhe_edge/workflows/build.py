"""Building models: a seeded random-weight checkpoint (`init`), and export followed by optimize."""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Callable

from mhe_edge.accounting import count_parameters
from mhe_edge.config import preset_config
from mhe_edge.results import Result


@dataclass
class InitReport(Result):
    path: str
    config: dict[str, Any]
    parameters: dict[str, int]  # by component, and "total"


def init_model(
    path: str | os.PathLike, *, arch: str = "decoder", attention: str = "mhe-mul", preset: str = "tiny", seed: int = 0,
    force: bool = False, **overrides: Any,
) -> InitReport:
    """Build a seeded random-weight model from a preset (fields in `overrides` replace the preset's) and save
    it as `.pt`, `.safetensors` or (a path with no suffix) a model folder.

    Example: `mhe_edge.init_model("model.pt", attention="mhe-add", preset="tiny", n_layers=3)`
    """
    from mhe_edge.models import build_model, save_checkpoint
    from mhe_edge.models.checkpoint import check_checkpoint_output

    check_checkpoint_output(path, force=force)  # before building: a bad path costs nothing
    config = preset_config(preset, arch=arch, attention=attention, **overrides)
    saved = save_checkpoint(build_model(config, seed=seed), path, force=force)
    return InitReport(str(saved), config.to_dict(), count_parameters(config))


@dataclass
class ExportOptimizeReport:
    exported: Any  # ExportReport
    optimized: Any | None  # OptimizeReport, when asked

    def to_dict(self) -> dict[str, Any]:
        """The export's report, with the optimize report (or None) under "optimized"."""
        return {**self.exported.to_dict(), "optimized": self.optimized.to_dict() if self.optimized else None}


def export_and_optimize(
    model, output=None, *, optimize: bool = False, target: str = "std", force: bool = False,
    on_step: Callable[[str], None] | None = None, on_optimize_step: Callable[[str], None] | None = None, **export_options: Any,
):
    """`export`, then (with `optimize`) `optimize` its output to OUTPUT.opt.onnx. Returns both reports."""
    from mhe_edge.exporters import export
    from mhe_edge.passes import build_passes, optimize as optimize_model

    if optimize:
        build_passes(target)  # an unknown target is refused before the export runs
    exported = export(model, output, force=force, on_step=on_step, **export_options)
    optimized = optimize_model(exported.path, target=target, force=force, on_step=on_optimize_step) if optimize else None
    return ExportOptimizeReport(exported, optimized)
