"""Resumable training checkpoints, written whole or not at all, never pickled.

A checkpoint is a folder `checkpoints/step-N` inside the run folder: `model.safetensors` (the weights),
`optimizer.safetensors` (AdamW's moments, one tensor per parameter and moment), `state.json` (the step,
the options, AdamW's hyper-parameters, the log so far). `checkpoints/latest` names the newest one; it is
replaced by a rename only after the folder is complete, so a crash or Ctrl-C at any moment leaves a
checkpoint that loads.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch

from mhe_edge.errors import CheckpointError, first_line

CHECKPOINTS, LATEST = "checkpoints", "latest"
MAX_STATE_BYTES = 50_000_000


def save_training_state(
    run_folder: Path, step: int, model, optimizer, state: dict[str, Any], keep: int = 1
) -> Path:
    from safetensors.torch import save_file

    root = run_folder / CHECKPOINTS
    root.mkdir(exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=f".step-{step}.", dir=root))
    try:
        save_file(
            {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()},
            str(stage / "model.safetensors"),
        )
        moments, groups = _flatten_optimizer(optimizer)
        save_file(moments, str(stage / "optimizer.safetensors"))
        (stage / "state.json").write_text(
            json.dumps({**state, "step": step, "param_groups": groups}) + "\n"
        )
        final = root / f"step-{step}"
        if final.exists():
            shutil.rmtree(final)
        os.rename(stage, final)
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
    pointer = root / f".{LATEST}.tmp"
    pointer.write_text(final.name + "\n")
    os.replace(pointer, root / LATEST)
    for old in sorted(
        (p for p in root.glob("step-*") if p != final), key=lambda p: p.stat().st_mtime
    )[: -keep or None]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def load_training_state(run_folder: Path, model, optimizer) -> dict[str, Any]:
    """Restore the newest checkpoint of `run_folder` into `model` and `optimizer`; returns its state.json."""
    from safetensors.torch import load_file

    root = run_folder / CHECKPOINTS
    pointer = root / LATEST
    if not pointer.is_file():
        raise CheckpointError(f"{run_folder.name} has no training checkpoint to resume from")
    name = pointer.read_text().strip()
    folder = root / name
    if not name.startswith("step-") or "/" in name or not folder.is_dir():
        raise CheckpointError(
            f"{run_folder.name}/{CHECKPOINTS}/{LATEST} names no checkpoint folder"
        )
    try:
        if (folder / "state.json").stat().st_size > MAX_STATE_BYTES:
            raise CheckpointError(f"{name}/state.json is too large to be a training state")
        state = json.loads((folder / "state.json").read_text())
        weights = load_file(str(folder / "model.safetensors"))
        model.load_state_dict(weights, strict=True)
        optimizer.load_state_dict(
            _unflatten_optimizer(
                load_file(str(folder / "optimizer.safetensors")), state["param_groups"]
            )
        )
    except CheckpointError:
        raise
    except (
        Exception
    ) as exc:  # json, safetensors and torch each raise their own classes for a damaged file
        raise CheckpointError(
            f"the checkpoint {name} of {run_folder.name} cannot be restored: {first_line(exc)}"
        ) from exc
    return state


def _flatten_optimizer(optimizer) -> tuple[dict[str, torch.Tensor], list[dict[str, Any]]]:
    saved = optimizer.state_dict()
    moments = {
        f"{index}.{key}": torch.as_tensor(value).detach().cpu().contiguous()
        for index, entry in saved["state"].items()
        for key, value in entry.items()
    }
    groups = [
        {k: (list(v) if isinstance(v, tuple) else v) for k, v in g.items()}
        for g in saved["param_groups"]
    ]
    return moments, groups


def _unflatten_optimizer(
    moments: dict[str, torch.Tensor], groups: list[dict[str, Any]]
) -> dict[str, Any]:
    state: dict[int, dict[str, torch.Tensor]] = {}
    for name, tensor in moments.items():
        index, key = name.split(".", 1)
        state.setdefault(int(index), {})[key] = tensor
    return {
        "state": state,
        "param_groups": [
            {k: (tuple(v) if k == "betas" else v) for k, v in g.items()} for g in groups
        ],
    }
