"""Safe checkpoints: `.pt` read only with `torch.load(weights_only=True)`, or `.safetensors`.

Nothing here ever unpickles arbitrary objects: a pickle that carries code is refused, not run.
"""

from __future__ import annotations

import json
import os
import pickle
from pathlib import Path
from typing import Any

import torch

from mhe_edge.config import ModelConfig
from mhe_edge.errors import CheckpointError, ConfigError, OutputError, RequestError, first_line
from mhe_edge.files import check_output, staged_output
from mhe_edge.models.checks import check_sizes, check_state_fits, check_tensors
from mhe_edge.models.transformer import Transformer, build_model

FORMAT = "mhe-edge/1"
SUFFIXES = (".pt", ".safetensors")


def check_checkpoint_output(path: str | os.PathLike, force: bool = False) -> Path:
    """A .pt or .safetensors file, or (no suffix) a model folder; checked before any work."""
    path = Path(path)
    if path.suffix == "":
        return check_output(path, force=force, folder=True)
    if path.suffix not in SUFFIXES:
        raise RequestError(
            f"a model must be saved as .pt, .safetensors or a folder (no suffix), not {path.name!r}"
        )
    return check_output(path, force=force, suffixes=SUFFIXES)


def save_checkpoint(model: Transformer, path: str | os.PathLike, *, force: bool = False) -> Path:
    """Write `model` (with its `.config`) to `.pt`, `.safetensors` or, for a path with no suffix, a model
    folder (config.json + model.safetensors): whole or not at all, never over an existing output unless `force`.

    Example: `mhe_edge.save_model(mhe_edge.build_model(mhe_edge.preset_config("tiny"), seed=0), "model.safetensors")`
    """
    path = check_checkpoint_output(path, force=force)
    if path.suffix == "":
        from mhe_edge.models.folder import save_folder

        return save_folder(model, path, force=force)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    from safetensors import SafetensorError
    from safetensors.torch import save_file

    with staged_output(path, force=force) as tmp:
        try:
            if path.suffix == ".pt":
                torch.save(
                    {"format": FORMAT, "config": model.config.to_dict(), "state_dict": state}, tmp
                )
            else:
                save_file(
                    state,
                    str(tmp),
                    metadata={"format": FORMAT, "config": json.dumps(model.config.to_dict())},
                )
        except (
            OSError,
            RuntimeError,
            SafetensorError,
        ) as exc:  # the writers report a full disk their own way
            raise OutputError(
                f"cannot write {path.name}: {first_line(exc, 200)}; nothing was written"
            ) from exc
    return path


save_model = save_checkpoint  # the public API's name


def load_model(path: str | os.PathLike) -> Transformer:
    """Load a checkpoint written by `save_checkpoint` into a model in eval mode (`model.config` set).

    Example: `model = mhe_edge.load_model("model.pt"); model.config.attention`
    """
    config, state = read_checkpoint(path)
    return model_from_state(config, state)


def model_from_state(config: ModelConfig, state: dict[str, torch.Tensor]) -> Transformer:
    """The model built straight from its weights: modules made on the meta device (no memory, no random
    initialisation), then the checked state assigned as their parameters, float32 (a bf16 or fp16 folder
    is widened once, here), so the weights are held once, not as a random model plus the state."""
    with torch.device("meta"):
        model = build_model(config)
    state = {
        name: t.float() if t.is_floating_point() and t.dtype != torch.float32 else t
        for name, t in state.items()
    }
    model.load_state_dict(state, strict=True, assign=True)
    left = [n for n, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta]
    if (
        left
    ):  # read_checkpoint checked every name; a module that made its own tensor would land here
        raise CheckpointError(f"{left[0]} was not in the checkpoint")
    return model.eval()


def read_checkpoint(path: str | os.PathLike) -> tuple[ModelConfig, dict[str, torch.Tensor]]:
    """The config and state dict of a checkpoint (.pt, .safetensors or a model folder), checked to fit each
    other (every key, every shape) before any module is built."""
    path = Path(path)
    if path.is_dir():
        from mhe_edge.models.folder import read_folder

        return read_folder(path)
    if not path.is_file():
        raise CheckpointError(f"{str(path)!r} is not a file")
    if path.stat().st_size == 0:
        raise CheckpointError(f"{path.name} is empty")
    with open(path, "rb") as f:
        head = f.read(8)
    if head.startswith(b"PK"):
        raw_config, state = _read_torch(path)
    elif len(head) == 8 and int.from_bytes(head, "little") < path.stat().st_size:
        raw_config, state = _read_safetensors(path)
    else:
        raise CheckpointError(
            f"{path.name} is not an mhe-edge checkpoint (neither a torch zip nor safetensors)"
        )
    try:
        config = ModelConfig.from_dict(raw_config)
    except (ConfigError, TypeError) as exc:
        raise CheckpointError(f"{path.name} has an invalid model config: {exc}") from exc
    check_sizes(config, path.stat().st_size, path.name)
    check_tensors(state, path.name)
    check_state_fits(config, state, path.name)
    return config, state


def _check_zip_entries(path: Path) -> None:
    """A torch checkpoint is a zip of stored (uncompressed) records: refuse compressed entries and records
    larger than the file, which could inflate to any size on load."""
    import zipfile

    try:
        with zipfile.ZipFile(path) as archive:
            entries = archive.infolist()
    except (zipfile.BadZipFile, OSError, ValueError) as exc:
        raise CheckpointError(
            f"{path.name} is not a readable checkpoint (truncated or corrupt?): {first_line(exc, 200)}"
        ) from exc
    size = path.stat().st_size
    for entry in entries:
        if entry.compress_type != zipfile.ZIP_STORED or entry.file_size > size:
            raise CheckpointError(
                f"{path.name}: record {entry.filename!r} is compressed or larger than the file; refused"
            )


def _read_torch(path: Path) -> tuple[Any, dict[str, torch.Tensor]]:
    _check_zip_entries(path)
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise CheckpointError(
            f"{path.name} holds objects a safe load refuses (not run): {first_line(exc)}"
        ) from exc
    except (
        Exception
    ) as exc:  # torch.load raises many classes on corrupt input (found by the fuzz test)
        raise CheckpointError(
            f"{path.name} is not a readable checkpoint (truncated or corrupt?): {first_line(exc, 200)}"
        ) from exc
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(
            f"{path.name} is a torch file but not an mhe-edge checkpoint (no 'format': '{FORMAT}')"
        )
    state = payload.get("state_dict")
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{path.name} has no state_dict of tensors")
    return payload.get("config"), state


def _read_safetensors(path: Path) -> tuple[Any, dict[str, torch.Tensor]]:
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
            state = {key: f.get_tensor(key) for key in f.keys()}
    except (SafetensorError, OSError, ValueError, RuntimeError, OverflowError, MemoryError) as exc:
        raise CheckpointError(
            f"{path.name} is not a readable safetensors file: {first_line(exc, 200)}"
        ) from exc
    if metadata.get("format") != FORMAT or "config" not in metadata:
        raise CheckpointError(
            f"{path.name} is a safetensors file but not an mhe-edge checkpoint (no config metadata)"
        )
    try:
        return json.loads(metadata["config"]), state
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{path.name} has config metadata that is not JSON") from exc
