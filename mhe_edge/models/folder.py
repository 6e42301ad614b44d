"""Model folders, the exchange format of the Hugging Face ecosystem: `config.json`, `model.safetensors` (or
shards named by `model.safetensors.index.json`) and `generation_config.json`.

Our own folders use Hugging Face's names for the standard config fields and the Llama tensor layout, with
`mhe_edge_*` keys and `*_head_embeddings` tensors for what is ours (docs/model-format.md). Folders written
by transformers for llama, mistral, qwen2, gpt2 and bert load too (one description per family in
models/families/). Everything is
checked before a module is built: config limits, tensor names (first missing or unexpected one named),
dtypes, shapes against the config, sizes bounded by the files, finite values.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch

from mhe_edge.config import ModelConfig
from mhe_edge.errors import CheckpointError, ConfigError, OutputError, first_line
from mhe_edge.files import check_output, staged_output
from mhe_edge.models import families
from mhe_edge.models.checks import check_sizes, check_state_fits, check_tensors
from mhe_edge.models.families.mhe_edge import hf_config

CONFIG_FILE, WEIGHTS_FILE, INDEX_FILE, GENERATION_FILE = (
    "config.json",
    "model.safetensors",
    "model.safetensors.index.json",
    "generation_config.json",
)
MAX_JSON_BYTES = 10_000_000
LOADABLE_DTYPES = ("F32", "F16", "BF16")


def save_folder(model, folder: str | os.PathLike, *, force: bool = False) -> Path:
    """Write `model` as a model folder; whole or not at all, replacing only a folder mhe-edge wrote."""
    from safetensors import SafetensorError

    folder = check_output(folder, force=force, folder=True)
    with staged_output(folder, force=force, folder=True) as stage:
        try:
            write_model_files(model, stage)
        except (OSError, SafetensorError) as exc:
            raise OutputError(
                f"cannot write {folder.name}: {first_line(exc, 200)}; nothing was written"
            ) from exc
    return folder


def write_model_files(model, folder: Path) -> list[str]:
    """config.json, model.safetensors and generation_config.json of `model`, into an existing folder (the
    caller stages it). Returns the names written."""
    from safetensors.torch import save_file

    config = model.config
    state = {
        families.get(families.OURS).source_name(k): v.detach().cpu().contiguous()
        for k, v in model.state_dict().items()
    }
    generation = {
        "bos_token_id": config.bos_token_id,
        "eos_token_id": config.eos_token_id,
        "do_sample": False,
    }
    save_file(state, str(folder / WEIGHTS_FILE), metadata={"format": "pt"})
    (folder / CONFIG_FILE).write_text(json.dumps(hf_config(config), indent=2) + "\n")
    (folder / GENERATION_FILE).write_text(json.dumps(generation, indent=2) + "\n")
    return [WEIGHTS_FILE, CONFIG_FILE, GENERATION_FILE]


def read_folder(folder: str | os.PathLike) -> tuple[ModelConfig, dict[str, torch.Tensor]]:
    """The config and state dict (our names, float32) of a model folder, checked as the module says."""
    folder = Path(folder)
    hf = _read_json(folder / CONFIG_FILE, folder.name)
    family = families.get(hf.get("model_type"))
    try:
        config = family.config(hf)
    except (ConfigError, TypeError, KeyError, ValueError, ArithmeticError) as exc:
        raise CheckpointError(
            f"{folder.name}/{CONFIG_FILE} does not describe a model mhe-edge can build: {first_line(exc)}"
        ) from exc
    files = _weight_files(folder)
    headers = _headers(files, folder.name)
    _check_names(folder.name, family, config, headers)
    check_sizes(config, sum(f.stat().st_size for f in files), folder.name)
    source = _load(files, headers, family, config)
    state = family.to_our_state(source, config)
    shown = family.source_name  # name tensors as the folder does
    check_tensors(state, folder.name, shown)
    check_state_fits(config, state, folder.name, shown)
    return config, state


def _read_json(path: Path, folder: str) -> dict[str, Any]:
    # A link to a plain file is read through, as every Hugging Face tool does (a hub cache snapshot is a
    # folder of links into its blobs); a device, a FIFO or a link to one is not a plain file.
    if path.exists() and not path.is_file():
        raise CheckpointError(f"{folder}/{path.name} is not a plain file; refused")
    if not path.is_file():
        raise CheckpointError(
            f"{folder} has no {path.name}; a model folder needs config.json and safetensors weights"
        )
    if path.stat().st_size > MAX_JSON_BYTES:
        raise CheckpointError(
            f"{folder}/{path.name} is larger than {MAX_JSON_BYTES:,} bytes; refused"
        )
    try:
        value = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as exc:
        raise CheckpointError(f"{folder}/{path.name} is not JSON") from exc
    if not isinstance(value, dict):
        raise CheckpointError(f"{folder}/{path.name} is not a JSON object")
    return value


def _weight_files(folder: Path) -> list[Path]:
    """model.safetensors, or the shards an index names (each a plain file inside the folder)."""
    if (folder / INDEX_FILE).is_file():
        weight_map = _read_json(folder / INDEX_FILE, folder.name).get("weight_map")
        if not isinstance(weight_map, dict) or not weight_map:
            raise CheckpointError(f"{folder.name}/{INDEX_FILE} has no weight_map")
        names = sorted(set(weight_map.values()))
    elif (folder / WEIGHTS_FILE).is_file():
        names = [WEIGHTS_FILE]
    else:
        raise CheckpointError(f"{folder.name} has neither {WEIGHTS_FILE} nor {INDEX_FILE}")
    files = []
    for name in names:
        path = folder / str(name)
        if (
            not isinstance(name, str)
            or "/" in name
            or "\\" in name
            or name in ("", ".", "..")
            or (path.exists() and not path.is_file())  # links to plain files are read through
        ):
            raise CheckpointError(
                f"{folder.name}: weight file {name!r} is not a plain file inside the folder; refused"
            )
        if not path.is_file():
            raise CheckpointError(f"{folder.name}: weight file {name} is missing")
        files.append(path)
    return files


def _headers(files: list[Path], folder: str) -> dict[str, tuple[Path, str, list[int]]]:
    """name -> (file, dtype, shape), from the safetensors headers alone (no tensor data read)."""
    from safetensors import SafetensorError, safe_open

    headers: dict[str, tuple[Path, str, list[int]]] = {}
    for path in files:
        try:
            with safe_open(str(path), framework="pt") as f:
                for name in f.keys():
                    view = f.get_slice(name)
                    headers[name] = (path, view.get_dtype(), list(view.get_shape()))
        except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
            raise CheckpointError(
                f"{folder}/{path.name} is not a readable safetensors file: {first_line(exc, 200)}"
            ) from exc
    for name, (path, dtype, _) in headers.items():
        if dtype not in LOADABLE_DTYPES:
            raise CheckpointError(
                f"{folder}/{path.name}: tensor {name} is {dtype}; mhe-edge loads F32, F16 and BF16 weights"
            )
    return headers


def _check_names(folder: str, family: families.Family, config: ModelConfig, headers: dict) -> None:
    """Every tensor name the config needs and no other, and (for the layouts that store our shapes as they are)
    every shape, all from the headers: no tensor has been read yet."""
    from mhe_edge.models.transformer import build_model

    with torch.device("meta"):
        ours = {k: v.shape for k, v in build_model(config).state_dict().items()}
    present = set(headers)
    expected = family.expected_names(ours)
    if family.tied_head and config.tie_embeddings:
        present = present - {family.tied_head}  # some tied checkpoints store the shared table twice
    missing = sorted(expected - present)
    unexpected = sorted(n for n in present - expected if not family.is_ignored(n))
    if missing:
        raise CheckpointError(
            f"{folder} lacks {len(missing)} tensor(s) its config needs, e.g. {missing[0]}"
        )
    if unexpected:
        raise CheckpointError(
            f"{folder} has {len(unexpected)} tensor(s) its config does not, e.g. {unexpected[0]}"
        )
    for name, shape in family.expected_shapes(ours).items():
        stored = headers[name][2]
        if len(stored) != len(shape) or any(
            w is not None and w != s for w, s in zip(shape, stored)
        ):
            wanted = tuple("any" if w is None else w for w in shape)
            raise CheckpointError(
                f"{folder}: {name} has shape {tuple(stored)}, its config needs {wanted}"
            )


def _load(
    files: list[Path], headers: dict, family: families.Family, config: ModelConfig
) -> dict[str, torch.Tensor]:
    """The tensors that matter, as float32 (bfloat16 and float16 weights are widened exactly)."""
    from safetensors import safe_open

    def wanted(name: str) -> bool:
        if family.is_ignored(name):
            return False
        return not (name == family.tied_head and config.tie_embeddings)  # it is the table

    wanted_names = {n for n in headers if wanted(n)}
    state = {}
    for path in files:
        with safe_open(str(path), framework="pt") as f:
            for name in f.keys():
                if name in wanted_names:
                    state[name] = f.get_tensor(name).to(torch.float32)
    return state
