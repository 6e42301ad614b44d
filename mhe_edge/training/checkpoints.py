"""Resumable training checkpoints, written whole or not at all, never pickled.

A checkpoint is a folder `checkpoints/step-N` inside the run folder: `model.safetensors` (the weights),
`optimizer.safetensors` (AdamW's moments, one tensor per parameter and moment), `state.json` (the step,
the options, AdamW's hyper-parameters, the log so far). `checkpoints/latest` names the newest one; it is
replaced by a rename only after the folder is complete, so a crash or Ctrl-C at any moment leaves a
checkpoint that loads. Both are written through mhe-edge's one writing path (staged, renamed, never
through a symbolic link).
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path
from typing import Any

import torch

from mhe_edge.errors import CheckpointError, RequestError, first_line
from mhe_edge.files import check_output, staged_output

CHECKPOINTS, LATEST = "checkpoints", "latest"
MAX_STATE_BYTES = 50_000_000


def save_training_state(
    run_folder: Path,
    step: int,
    weights: dict[str, torch.Tensor],
    optimizer_state: dict[str, Any],
    state: dict[str, Any],
    keep: int = 1,
) -> Path:
    """Write checkpoint `step`: `weights` (the model's whole state_dict) and `optimizer_state` (the
    optimizer's whole state_dict, as `torch.optim.Optimizer.state_dict()` gives it) beside `state`."""
    from safetensors.torch import save_file

    root = run_folder / CHECKPOINTS
    if root.is_symlink():
        raise RequestError(f"{root} is a symbolic link; mhe-edge never writes through one")
    root.mkdir(exist_ok=True)
    final = check_output(root / f"step-{step}", force=True, folder=True)
    with staged_output(final, force=True, folder=True) as stage:
        save_file(
            {k: v.detach().cpu().contiguous() for k, v in weights.items()},
            str(stage / "model.safetensors"),
        )
        moments, groups = _flatten_optimizer(optimizer_state)
        save_file(moments, str(stage / "optimizer.safetensors"))
        (stage / "state.json").write_text(
            json.dumps({**state, "step": step, "param_groups": groups}) + "\n"
        )
    with staged_output(check_output(root / LATEST, force=True), force=True) as pointer:
        pointer.write_text(final.name + "\n")
    for old in sorted(
        (p for p in root.glob("step-*") if p != final and not p.is_symlink()),
        key=lambda p: p.stat().st_mtime,
    )[: -keep or None]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def load_training_state(run_folder: Path, model, optimizer) -> dict[str, Any]:
    """Restore the newest checkpoint of `run_folder` into `model` and `optimizer`; returns its state.json.

    Everything is checked before the model is touched: the state's fields and types, the weights' and
    moments' names and shapes (by `load_state_dict`), and that every weight and moment is finite (a NaN
    checkpoint would train on into NaN checkpoints)."""
    from safetensors.torch import load_file

    root = run_folder / CHECKPOINTS
    pointer = root / LATEST
    if not pointer.is_file():
        raise CheckpointError(f"{run_folder.name} has no training checkpoint to resume from")
    if pointer.stat().st_size > 1000:
        raise CheckpointError(f"{run_folder.name}/{CHECKPOINTS}/{LATEST} is not a checkpoint name")
    name = pointer.read_bytes().decode("utf-8", "replace").strip()
    folder = root / name
    if not name.startswith("step-") or "/" in name or folder.is_symlink() or not folder.is_dir():
        raise CheckpointError(
            f"{run_folder.name}/{CHECKPOINTS}/{LATEST} names no checkpoint folder"
        )
    try:
        if (folder / "state.json").stat().st_size > MAX_STATE_BYTES:
            raise CheckpointError(f"{name}/state.json is too large to be a training state")
        state = _checked_state(json.loads((folder / "state.json").read_text()), name)
        weights = load_file(str(folder / "model.safetensors"))
        moments = load_file(str(folder / "optimizer.safetensors"))
        for kind, tensors in (("weight", weights), ("optimizer moment", moments)):
            for key, tensor in tensors.items():
                if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
                    raise CheckpointError(
                        f"the checkpoint {name} of {run_folder.name} holds a non-finite {kind}"
                        f" ({key}); resume from an earlier run or start again"
                    )
        model.load_state_dict(weights, strict=True)
        optimizer.load_state_dict(_unflatten_optimizer(moments, state["param_groups"]))
    except CheckpointError:
        raise
    except (
        Exception
    ) as exc:  # json, safetensors and torch each raise their own classes for a damaged file
        raise CheckpointError(
            f"the checkpoint {name} of {run_folder.name} cannot be restored: {first_line(exc)}"
        ) from exc
    return state


def _checked_state(state: Any, name: str) -> dict[str, Any]:
    """state.json's fields, typed as save_training_state writes them."""
    expected: dict[str, type | tuple[type, ...]] = {
        "step": int,
        "elapsed": (int, float),
        "log": list,
        "param_groups": list,
    }
    if not isinstance(state, dict):
        raise CheckpointError(f"{name}/state.json is not a JSON object")
    for key, kind in expected.items():
        value = state.get(key)
        if isinstance(value, bool) or not isinstance(value, kind):
            raise CheckpointError(f"{name}/state.json: {key} is missing or of the wrong type")
    if state["step"] < 1 or not math.isfinite(state["elapsed"]) or state["elapsed"] < 0:
        raise CheckpointError(f"{name}/state.json: step or elapsed is out of range")
    if not all(isinstance(g, dict) for g in state["param_groups"]):
        raise CheckpointError(f"{name}/state.json: param_groups must be mappings")
    if not all(isinstance(e, dict) for e in state["log"]):
        raise CheckpointError(f"{name}/state.json: log entries must be mappings")
    return state


def _flatten_optimizer(
    saved: dict[str, Any],
) -> tuple[dict[str, torch.Tensor], list[dict[str, Any]]]:
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
