"""`train --fsdp`: the weights, gradients and AdamW's moments sharded across the processes torchrun starts
(PyTorch's FSDP2, `fully_shard`), each process holding 1/N of each instead of DDP's whole copy.

Each transformer block is one unit, then the root (the embeddings, the final norm, the output projection):
in the forward and the backward a unit's weights are gathered whole just for it, and its gradients are
averaged and scattered back into shards right after (the same mean over processes DDP takes, so a run gives
DDP's results). The tied output projection is the token embedding itself (`F.linear(x, tok_emb.weight)`),
one parameter of the root unit: sharding cannot untie it.

Checkpoints are written whole: every process takes part in gathering the full weights and moments to the
CPU of rank 0, which writes the same files as a run without `--fsdp` (the moments indexed as
`torch.optim.AdamW.state_dict` indexes them), so any run resumes with or without `--fsdp`, in any number of
processes. On the CPU the collectives are gloo's, on CUDA NCCL's.
"""

from __future__ import annotations

import contextlib
import warnings
from typing import Any

import torch

# FSDP2 warns when a unit returns a view (an in-place op on it would skip the gather). The blocks return
# their KV caches as views; nothing modifies a block's outputs in place (`x = x + a`, never `x += a`).
_VIEW_WARNING = r"FSDP2-wrapped module .* returned a view tensor"


def shard(model, device: torch.device, processes: int):
    """Shard `model` in place across the `processes` of the process group: each block, then the root.
    Its parameters become DTensor shards on `device` (moved there one unit at a time, each then cut to
    this rank's shard); an optimizer must be made over them afterwards."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    # the mesh names the device: without one fully_shard moves the shards to a GPU whenever there is
    # one, also for a CPU run over gloo (reported to crash there)
    mesh = init_device_mesh(device.type, (processes,))
    for block in model.blocks:
        fully_shard(block, mesh=mesh)
    fully_shard(model, mesh=mesh)
    return model


def named_optimizer_state(model, optimizer) -> dict[str, Any] | None:
    """A (not yet sharded) model's optimizer state keyed by parameter name, the form that can be loaded
    into the sharded model's optimizer; None when the optimizer has no state yet (a new run)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

    if not optimizer.state:
        return None
    return get_optimizer_state_dict(
        model, optimizer, options=StateDictOptions(full_state_dict=True)
    )


def load_optimizer_state(model, optimizer, named: dict[str, Any]) -> None:
    """Each process keeps its shard of the whole, named optimizer state `named` (from
    `named_optimizer_state` of this model before sharding: the same parameters by construction)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

    # not strict: a parameter that never had a gradient (MHE-ADD's key embeddings: softmax drops them)
    # has no moments, in the checkpoint as in AdamW itself; it keeps none
    whole = StateDictOptions(full_state_dict=True, strict=False)
    set_optimizer_state_dict(model, optimizer, optim_state_dict=named, options=whole)
    # Loading first steps AdamW once at lr 0 on zero gradients, which gives every parameter moments and
    # a step count; a parameter that had none (never stepped: frozen, or without a gradient) must have
    # none again, or its first real step would be bias-corrected as its second
    for name, parameter in model.named_parameters():
        if name not in named["state"]:
            optimizer.state.pop(parameter, None)


def gather_whole(model, optimizer) -> tuple[dict[str, Any], dict[str, Any]]:
    """(the full weights, the full optimizer state as `optimizer.state_dict()` gives it unsharded), on
    the CPU of rank 0; empty on the other ranks. Every process must call it (it gathers)."""
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        get_model_state_dict,
        get_optimizer_state_dict,
    )

    whole = StateDictOptions(full_state_dict=True, cpu_offload=True)
    weights = get_model_state_dict(model, options=whole)
    named = get_optimizer_state_dict(model, optimizer, options=whole)
    return weights, (_indexed(named) if named else {})


def _indexed(named: dict[str, Any]) -> dict[str, Any]:
    """A name-keyed optimizer state in `Optimizer.state_dict()`'s own form: parameters numbered in the
    order of the param groups, the first group's first, as torch numbers them."""
    index: dict[str, int] = {}
    groups = []
    for group in named["param_groups"]:
        numbers = [index.setdefault(name, len(index)) for name in group["params"]]
        groups.append({**group, "params": numbers})
    return {"state": {index[n]: v for n, v in named["state"].items()}, "param_groups": groups}


@contextlib.contextmanager
def quiet_views():
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=_VIEW_WARNING, category=UserWarning)
        yield
