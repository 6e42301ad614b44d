"""Checks every loaded state dict passes before a module is built: sizes, storage, values, shapes."""

from __future__ import annotations

from collections.abc import Callable

import torch

from mhe_edge.accounting import count_parameters
from mhe_edge.config import ModelConfig
from mhe_edge.errors import CheckpointError

MIN_BYTES_PER_PARAMETER = (
    2  # float16 / bfloat16: a file holding a model's weights has at least this many
)


def check_sizes(config: ModelConfig, file_bytes: int, name: str) -> None:
    """The config's parameters must fit in the bytes on disk: a tiny file claiming a huge model is refused
    before anything is built."""
    claimed = count_parameters(config)["total"]
    if claimed * MIN_BYTES_PER_PARAMETER > file_bytes:
        raise CheckpointError(
            f"{name}: its config describes {claimed:,} parameters, more than its {file_bytes:,} bytes can hold"
        )


def check_tensors(
    state: dict[str, torch.Tensor], name: str, shown: Callable[[str], str] = str
) -> None:
    """Every tensor a plain, finite block of its own: no view into a larger storage, no stride-0 expansion.
    `shown` maps our tensor names to the ones the user's file uses, for the messages."""
    for key, tensor in state.items():
        own_bytes = tensor.numel() * tensor.element_size()
        if (
            not tensor.is_contiguous()
            or tensor.untyped_storage().nbytes() != own_bytes
            or tensor.storage_offset()
        ):
            raise CheckpointError(
                f"{name}: tensor {shown(key)} is a view or expansion of other memory, not stored weights"
            )
        if tensor.is_floating_point() and not _all_finite(tensor):
            raise CheckpointError(f"{name}: tensor {shown(key)} holds NaN or infinite values")


FINITE_CHECK_ELEMENTS = (
    1 << 20
)  # isfinite's boolean temporary stays at 1 MiB, not a quarter of the table


def _all_finite(tensor: torch.Tensor) -> bool:
    flat = tensor.reshape(-1)  # contiguous (checked above): a view, not a copy
    return all(bool(torch.isfinite(part).all()) for part in flat.split(FINITE_CHECK_ELEMENTS))


def check_state_fits(
    config: ModelConfig,
    state: dict[str, torch.Tensor],
    name: str,
    shown: Callable[[str], str] = str,
) -> None:
    """Every name the config's model has, no other, each of its shape and floating point."""
    from mhe_edge.models.transformer import build_model

    with torch.device("meta"):  # shapes only: no memory, no initialisation cost
        expected = build_model(config).state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing:
        raise CheckpointError(
            f"{name} lacks {len(missing)} weight(s) its config needs, e.g. {shown(missing[0])}"
        )
    if unexpected:
        raise CheckpointError(
            f"{name} has {len(unexpected)} weight(s) its config does not, e.g. {shown(unexpected[0])}"
        )
    for key, tensor in expected.items():
        if state[key].shape != tensor.shape:
            raise CheckpointError(
                f"{name}: {shown(key)} has shape {tuple(state[key].shape)}, its config needs {tuple(tensor.shape)}"
            )
        if not state[key].is_floating_point():
            raise CheckpointError(
                f"{name}: {shown(key)} is {state[key].dtype}, not a floating-point tensor"
            )
