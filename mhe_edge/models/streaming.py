"""Reading a model a layer at a time: a model folder's tensors come off the safetensors files one block's worth
at a time (and outside the blocks one tensor at a time), as stored, so a conversion holds one layer, not the
whole model.

Every check `read_folder` makes is made here too: the config, every tensor name and (for the Llama layout)
shape from the headers before any tensor is read, then each group's values and shapes as it is read.
Checkpoint files (.pt, .safetensors) are small by construction and are read whole, then handed out by layer;
so are folders of a family whose tensor rewrite needs the whole model at once (BERT's folds two embedding
tables into one), which are encoders of modest size.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch

from mhe_edge.config import ModelConfig
from mhe_edge.errors import CheckpointError, ConfigError, first_line
from mhe_edge.models import families
from mhe_edge.models import folder as folders
from mhe_edge.models.checks import check_sizes, check_tensors

# The block index in a tensor name of every layout mhe-edge reads (ours, Llama, GPT-2, BERT).
_LAYER = re.compile(r"^(?:blocks|model\.layers|transformer\.h|encoder\.layer)\.(\d+)\.")
STORED_DTYPES = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16}
# Families whose rewrite (families.Family.to_ours) works a tensor at a time, so they can be read in groups.
PER_TENSOR_REWRITES = ("gpt2",)
REST = -1  # the group of everything outside the blocks: embeddings, final norm, output projection


@dataclass
class LayeredSource:
    """A model to be read group by group: `groups()` yields (block index or REST, our-named float32 state)."""

    name: str
    config: ModelConfig
    family: families.Family
    source_bytes: int  # bytes of the weights on disk
    dtype: torch.dtype = torch.float32  # most of its tensors are stored (and read) as this
    _folder: Path | None = None
    _headers: dict = field(default_factory=dict)
    _state: dict[str, torch.Tensor] | None = None

    def groups(self) -> Iterator[tuple[int, dict[str, torch.Tensor]]]:
        expected = _expected_shapes(self.config)
        seen: set[str] = set()
        for index, names in _grouped(self._names()):
            state = self._read(names)
            check_tensors(state, self.name, self.family.source_name)
            for key, tensor in state.items():
                if key not in expected:
                    raise CheckpointError(f"{self.name} has a weight its config does not: {key}")
                if tuple(tensor.shape) != expected[key]:
                    raise CheckpointError(
                        f"{self.name}: {key} has shape {tuple(tensor.shape)}, its config needs {expected[key]}"
                    )
            seen |= set(state)
            yield index, state
        missing = sorted(set(expected) - seen)
        if missing:
            raise CheckpointError(f"{self.name} lacks a weight its config needs: {missing[0]}")

    def _names(self) -> list[str]:
        if self._state is not None:
            return list(self._state)
        return [n for n in self._headers if self._wanted(n)]

    def _wanted(self, name: str) -> bool:
        if self.family.is_ignored(name):
            return False
        return not (name == self.family.tied_head and self.config.tie_embeddings)

    def _read(self, names: list[str]) -> dict[str, torch.Tensor]:
        if self._state is not None:
            return {n: self._state.pop(n) for n in names}
        from safetensors import safe_open

        by_file: dict[Path, list[str]] = {}
        for name in names:
            by_file.setdefault(self._headers[name][0], []).append(name)
        source = {}
        for path, in_file in by_file.items():
            with safe_open(str(path), framework="pt") as f:
                for name in in_file:
                    source[name] = f.get_tensor(name)
        return self.family.to_our_state(source, self.config)


def open_source(path: str | os.PathLike) -> LayeredSource:
    """A model folder or checkpoint, checked as far as its headers allow, ready to be read group by group."""
    from mhe_edge.models.checkpoint import read_checkpoint

    path = Path(path)
    ours = families.get(families.OURS)
    if not path.is_dir():
        config, state = read_checkpoint(path)  # fully checked; small files only come this way
        return LayeredSource(path.name, config, ours, path.stat().st_size, _state=dict(state))
    hf = folders._read_json(path / folders.CONFIG_FILE, path.name)
    family = families.get(hf.get("model_type"))
    try:
        config = family.read_config(hf)
    except (ConfigError, TypeError, KeyError) as exc:
        raise CheckpointError(
            f"{path.name}/{folders.CONFIG_FILE} does not describe a model mhe-edge can build: {first_line(exc)}"
        ) from exc
    files = folders._weight_files(path)
    headers = folders._headers(files, path.name)
    folders._check_names(path.name, family, config, headers)
    size = sum(f.stat().st_size for f in files)
    check_sizes(config, size, path.name)
    stored = [dtype for _, dtype, _ in headers.values()]
    dtype = STORED_DTYPES[max(set(stored), key=stored.count)]
    if family.to_ours is not None and family.model_type not in PER_TENSOR_REWRITES:
        config, state = read_checkpoint(path)  # read whole, every check made
        return LayeredSource(path.name, config, ours, size, dtype, _state=dict(state))
    return LayeredSource(path.name, config, family, size, dtype, _folder=path, _headers=headers)


def _grouped(names: list[str]) -> list[tuple[int, list[str]]]:
    """Source names by block, blocks in order, then the rest a tensor at a time."""
    groups: dict[int, list[str]] = {}
    for name in names:
        match = _LAYER.match(name)
        groups.setdefault(int(match.group(1)) if match else REST, []).append(name)
    rest = groups.pop(REST, [])
    ordered = [(key, groups[key]) for key in sorted(groups)]
    return ordered + [(REST, [name]) for name in rest]


def _expected_shapes(config: ModelConfig) -> dict[str, tuple[int, ...]]:
    from mhe_edge.models.transformer import build_model

    with torch.device("meta"):
        return {k: tuple(v.shape) for k, v in build_model(config).state_dict().items()}
