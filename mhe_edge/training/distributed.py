"""Training in several processes with torch.distributed, as torchrun starts them (DDP, or FSDP2 with
`--fsdp`: gloo on the CPU, NCCL on CUDA). One process trains exactly as before; under torchrun every process
(rank) trains on its share of each step's rows, DDP (or FSDP) averages the gradients, and rank 0 alone
writes. With DDP rank 0 alone validates and checkpoints; sharded, every rank takes part in both (the
weights are gathered for each unit's forward, and whole for a checkpoint), see training/sharding.py.

    torchrun --standalone --nproc-per-node 2 -m mhe_edge train -o run --batch 4   # = one process at --batch 8
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from typing import Any

import torch

from mhe_edge.errors import ProviderError, RequestError


@dataclass
class World:
    rank: int = 0  # this process
    size: int = 1  # processes training together
    device: Any = None  # where this process's tensors live (collectives need it for NCCL)
    sharded: bool = False  # FSDP: each rank holds a shard of the weights, gradients and moments

    @classmethod
    def current(cls) -> World:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            return cls(dist.get_rank(), dist.get_world_size())
        return cls()

    def wrap(self, model, device, fsdp: bool = False):
        """`model` itself in one process; DistributedDataParallel over it in several (the optimizer keeps
        `model`'s parameters: DDP shares them), on `device`. With `fsdp`, `model` sharded in place (its
        parameters are replaced: the optimizer must be made anew over them)."""
        self.device = device
        if fsdp:
            from mhe_edge.training.sharding import shard

            self.sharded = True
            return shard(model, device, self.size)
        model.to(device)
        if self.size == 1:
            return model
        from torch.nn.parallel import DistributedDataParallel

        # MHE-ADD's key embeddings get no gradient from the fused core (softmax drops them): DDP must
        # look for unused parameters (an extra pass over the graph, so only then)
        return DistributedDataParallel(
            model,
            device_ids=[device.index] if device.type == "cuda" else None,
            find_unused_parameters=model.config.attention == "mhe-add",
        )

    def no_sync(self, net, last: bool):
        """DDP's no_sync for every micro-batch but the last, so gradients are averaged once per step.
        Sharded, each micro-batch's gradients are averaged into the shards as they come (so no rank ever
        holds a whole model's gradients between micro-batches)."""
        if self.size == 1 or last or self.sharded:
            return contextlib.nullcontext()
        return net.no_sync()

    def agree(self, loss: float, elapsed: float) -> tuple[float, float]:
        """(the mean of every process's loss, rank 0's elapsed time): all processes log the same loss and
        stop a timed run at the same step."""
        if self.size == 1:
            return loss, elapsed
        import torch.distributed as dist

        shared = torch.tensor(
            [loss, elapsed if self.rank == 0 else 0.0], dtype=torch.float64, device=self.device
        )
        dist.all_reduce(shared)
        return float(shared[0]) / self.size, float(shared[1])

    def barrier(self) -> None:
        if self.size > 1:
            import torch.distributed as dist

            dist.barrier()


@contextlib.contextmanager
def processes(provider: str):
    """Join the process group torchrun describes in the environment (WORLD_SIZE > 1), for the duration;
    one process otherwise. Yields the World."""
    size = int(os.environ.get("WORLD_SIZE", "1") or 1)
    import torch.distributed as dist

    if size <= 1 or (dist.is_available() and dist.is_initialized()):
        yield World.current()
        return
    if not dist.is_available():
        raise ProviderError(
            "this PyTorch was built without torch.distributed; train in one process"
        )
    if "RANK" not in os.environ or "MASTER_ADDR" not in os.environ:
        raise RequestError(
            "WORLD_SIZE is set but RANK/MASTER_ADDR are not: start several processes with torchrun"
        )
    if provider == "cuda":
        if not torch.cuda.is_available():
            raise ProviderError(
                "--provider cuda was asked for, but this PyTorch has no CUDA device"
            )
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        backend = "nccl"
    else:
        backend = "gloo"
    dist.init_process_group(backend)
    try:
        yield World.current()
    finally:
        dist.destroy_process_group()
