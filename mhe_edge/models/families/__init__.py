"""Model families: one description per `model_type` a model folder's config.json may name.

A family says how its config.json becomes a ModelConfig (refusing, by name, any field that would change
the computation and that mhe-edge does not implement), what its tensors are called, and how they become
our modules' tensors. Each family lives in one module of this package and registers itself with the
`family` decorator on its config reader; every module here is imported when the registry is first read,
so adding a family is one new file (and its test). Import (models/folder.py) reads folders through it.
"""

from __future__ import annotations

import importlib
import pkgutil
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from mhe_edge.config import ModelConfig
from mhe_edge.errors import CheckpointError
from mhe_edge.models.families.naming import check_schema, inverse, rename

Rules = list[tuple[str, str]]


@dataclass(frozen=True)
class Family:
    model_type: str  # config.json's "model_type"
    read_config: Callable[[dict[str, Any]], ModelConfig]  # config.json (parsed) -> ModelConfig
    names: Rules  # our tensor name -> the folder's (regex rules, first match wins)
    # tensors a folder may hold that the model does not use (a tied head's copy, a pooler, old buffers)
    ignored: re.Pattern | None = None
    # the folder's tensors have our modules' shapes, so shapes are checked from the headers by name
    stores_our_shapes: bool = True
    # otherwise: the shape each folder tensor must have for a model whose state has these shapes
    # (None for a dimension the config leaves free)
    shapes: Callable[[dict[str, torch.Size]], dict[str, tuple[int | None, ...]]] | None = None
    # the output head's name, which a checkpoint with tied embeddings may store beside the table
    tied_head: str | None = None
    # the folder's name set for a model whose state has these names (default: each of ours renamed)
    expected: Callable[[dict[str, torch.Size]], set[str]] | None = None
    # the folder's tensors -> ours, rewritten exactly where the layouts differ (default: renamed back)
    to_ours: Callable[[dict[str, torch.Tensor], ModelConfig], dict[str, torch.Tensor]] | None = None
    # config.json's fields and their kinds (naming.KINDS), checked before the config is read
    schema: dict[str, str] = field(default_factory=dict)

    def config(self, hf: dict[str, Any]) -> ModelConfig:
        """The ModelConfig of a parsed config.json, its fields' kinds checked first."""
        check_schema(hf, self.model_type, self.schema)
        return self.read_config(hf)

    def source_name(self, ours: str) -> str:
        """Our tensor name as this family's folders name it (for messages and for writing)."""
        return rename(ours, self.names)

    def expected_names(self, ours: dict[str, torch.Size]) -> set[str]:
        if self.expected is not None:
            return self.expected(ours)
        return {self.source_name(k) for k in ours}

    def expected_shapes(self, ours: dict[str, torch.Size]) -> dict[str, tuple[int | None, ...]]:
        """Each folder tensor's shape, checked from the headers before any tensor is read."""
        if self.stores_our_shapes:
            return {self.source_name(k): tuple(v) for k, v in ours.items()}
        return self.shapes(ours) if self.shapes is not None else {}

    def is_ignored(self, name: str) -> bool:
        return bool(self.ignored and self.ignored.match(name))

    def to_our_state(
        self, source: dict[str, torch.Tensor], config: ModelConfig
    ) -> dict[str, torch.Tensor]:
        if self.to_ours is not None:
            return self.to_ours(source, config)
        back = inverse(self.names)
        return {rename(k, back): v for k, v in source.items()}


_FAMILIES: dict[str, Family] = {}


def family(model_type: str, names: Rules, **description: Any) -> Callable:
    """Register the decorated config reader as `model_type`'s family, with its naming and rewrites."""

    def register(read_config: Callable[[dict[str, Any]], ModelConfig]):
        if model_type in _FAMILIES:
            raise ValueError(f"model family {model_type!r} is registered twice")
        _FAMILIES[model_type] = Family(model_type, read_config, names, **description)
        return read_config

    return register


def _load_all() -> dict[str, Family]:
    """The registry, once every module of this package has been imported (each registers its own)."""
    for module in pkgutil.iter_modules(__path__):
        if module.name != "naming":
            importlib.import_module(f"{__name__}.{module.name}")  # a no-op once imported
    return _FAMILIES


def known() -> list[str]:
    """Every registered model_type, ours first."""
    return sorted(_load_all(), key=lambda name: (name != OURS, name))


def get(model_type: Any) -> Family:
    """The family of `model_type`, or a CheckpointError naming the ones mhe-edge reads."""
    families = _load_all()
    if not isinstance(model_type, str) or model_type not in families:
        raise CheckpointError(
            f"model_type {model_type!r} is not supported; mhe-edge reads {', '.join(known())}"
        )
    return families[model_type]


OURS = "mhe_edge"  # our own folders' model_type
