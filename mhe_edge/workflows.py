"""Library entry points behind the CLI commands that build things."""
from __future__ import annotations

import os
from typing import Any

from mhe_edge.accounting import count_parameters
from mhe_edge.atomic import check_output_path
from mhe_edge.checkpoint import save_checkpoint
from mhe_edge.config import preset_config
from mhe_edge.models import build_model


def init_checkpoint(
    path: str | os.PathLike, *, arch: str, attention: str, preset: str = "tiny", seed: int = 0,
    force: bool = False, **overrides: Any,
) -> dict[str, Any]:
    """Build a seeded random-weight model and save it; returns what was written."""
    target = check_output_path(path, force=force)
    config = preset_config(preset, arch=arch, attention=attention, **overrides)
    model = build_model(config, seed=seed)
    save_checkpoint(model, target)
    return {"path": str(target), "config": config.to_dict(), "parameters": count_parameters(config)}
