"""The training loop: AdamW with warmup and a cosine decay, gradient clipping, PyTorch's fused attention
(MHE folded, exactly), validation on held-out text at intervals, and resumable checkpoints.

Reproducible on the CPU: batch n is drawn from a generator seeded with (seed, n), so a run resumed from a
checkpoint continues exactly as if it had never stopped. A run bounded by `minutes` decays its learning rate
over the time allowed instead of the steps, so it is as long as the clock says, not reproducible step for step.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mhe_edge import options as declared
from mhe_edge.errors import ProviderError, RequestError, TrainingInterrupted
from mhe_edge.training import sharding
from mhe_edge.training.checkpoints import save_training_state
from mhe_edge.training.distributed import World
from mhe_edge.training.uptraining import drop_frozen_gradients, uptraining_loss

DEFAULT_STEPS = 1000
MAX_STEPS = int(declared.STEPS.high or 0)  # a run bounded by minutes plans this many
FSDP_NEEDS_PROCESSES = (
    "--fsdp shards the model across the processes torchrun starts, and there is one process: start two"
    " or more (`torchrun --nproc-per-node N -m mhe_edge train ...`), or drop --fsdp"
)


@dataclass
class TrainOptions:
    steps: int | None = None  # optimizer steps; with neither steps nor minutes: DEFAULT_STEPS
    minutes: float | None = None  # stop after this much training time (the lr decays over it)
    seq_len: int | None = None  # tokens per training row; None: min(the model's max_seq_len, 256)
    batch: int = declared.TRAIN_BATCH.default  # rows per micro-batch, per process
    # micro-batches per optimizer step: a step trains on batch * grad_accum * processes rows
    grad_accum: int = declared.GRAD_ACCUM.default
    lr: float = declared.LR.default  # peak learning rate
    min_lr_ratio: float = declared.MIN_LR_RATIO.default  # the cosine decays to lr * this
    warmup: int | None = None  # linear warmup steps; None: 5% of the steps (at most 200)
    # AdamW decay, for weight matrices and embedding tables only (see param_groups)
    weight_decay: float = declared.WEIGHT_DECAY.default
    grad_clip: float = declared.GRAD_CLIP.default  # clip the global gradient norm to this
    seed: int = declared.TRAIN_SEED.default  # weights, batches and everything random
    # validate on held-out text every this many steps (and at the end)
    eval_every: int = declared.EVAL_EVERY.default
    eval_windows: int = (
        declared.EVAL_WINDOWS.default
    )  # at most this many held-out windows per validation
    # save a resumable checkpoint every this many steps (and on Ctrl-C, unless sharded)
    checkpoint_every: int = declared.CHECKPOINT_EVERY.default
    provider: str = "cpu"  # "cpu", or "cuda" (bf16 autocast)
    fsdp: bool = declared.FSDP.default  # under torchrun: shard instead of a whole copy per process
    threads: int | None = None  # PyTorch threads on the CPU (default: PyTorch's choice)
    # uptraining: the first steps train only the converted attention tensors
    freeze_steps: int = declared.FREEZE_STEPS.default
    # with a teacher: loss = (1 - this) * cross-entropy + this * KL
    distill_weight: float = declared.DISTILL_WEIGHT.default

    def check(self) -> None:
        """RequestError (exit 2, as the CLI) naming the first option out of its declared bounds."""
        declared.check_all(
            (declared.STEPS, self.steps),
            (declared.MINUTES, self.minutes),
            (declared.TRAIN_SEQ_LEN, self.seq_len),
            (declared.TRAIN_BATCH, self.batch),
            (declared.GRAD_ACCUM, self.grad_accum),
            (declared.LR, self.lr),
            (declared.MIN_LR_RATIO, self.min_lr_ratio),
            (declared.WARMUP_STEPS, self.warmup),
            (declared.WEIGHT_DECAY, self.weight_decay),
            (declared.GRAD_CLIP, self.grad_clip),
            (declared.TRAIN_SEED, self.seed),
            (declared.EVAL_EVERY, self.eval_every),
            (declared.EVAL_WINDOWS, self.eval_windows),
            (declared.CHECKPOINT_EVERY, self.checkpoint_every),
            (declared.PROVIDER, self.provider),
            (declared.FSDP, self.fsdp),
            (declared.TORCH_THREADS, self.threads),
            (declared.FREEZE_STEPS, self.freeze_steps),
            (declared.DISTILL_WEIGHT, self.distill_weight),
        )
        if self.freeze_steps > self.total_steps:
            raise RequestError(
                f"--freeze-steps {self.freeze_steps} is more than the run's {self.total_steps} steps"
            )

    @property
    def total_steps(self) -> int:
        if self.steps is not None:
            return self.steps
        return MAX_STEPS if self.minutes else DEFAULT_STEPS


@dataclass
class StepInfo:
    step: int  # steps done
    total: int | None  # steps planned (None when bounded by time)
    loss: float
    lr: float
    tokens_per_second: float
    elapsed: float  # seconds of training so far (resumed runs included)
    fraction: float  # of the run done, by steps or by time
    val_loss: float | None = None  # when this step validated


def device_for(provider: str) -> torch.device:
    if provider == "cuda":
        if not torch.cuda.is_available():
            raise ProviderError(
                "--provider cuda was asked for, but this PyTorch has no CUDA device (install a CUDA build of torch)"
            )
        return torch.device("cuda", torch.cuda.current_device())  # torchrun: this process's GPU
    return torch.device("cpu")


def param_groups(model, weight_decay: float) -> list[dict[str, Any]]:
    """Decay weight matrices and embedding tables; not biases, norm gains or the MHE head embeddings.

    Head embeddings are per-head scales (MUL) and shifts (ADD), like a norm's gain and bias: decaying them
    pulls MUL's toward 0 and ADD's toward 0, i.e. toward heads that see nothing or all the same thing.
    """
    decay: list[torch.nn.Parameter] = []
    keep: list[torch.nn.Parameter] = []
    for name, parameter in model.named_parameters():
        (decay if parameter.dim() >= 2 and not name.endswith("head_embeddings") else keep).append(
            parameter
        )
    return [{"params": decay, "weight_decay": weight_decay}, {"params": keep, "weight_decay": 0.0}]


def learning_rate(options: TrainOptions, fraction: float, step: int, warmup: int) -> float:
    if step < warmup:
        return options.lr * (step + 1) / warmup
    cosine = 0.5 * (1 + math.cos(math.pi * min(1.0, fraction)))
    return options.lr * (options.min_lr_ratio + (1 - options.min_lr_ratio) * cosine)


def batch_at(ids, step: int, options: TrainOptions, seq_len: int, processes: int = 1) -> np.ndarray:
    """All the rows of step `step` (every process's, every micro-batch's): random windows of `seq_len`
    ids, drawn from a generator seeded by (seed, step). `ids` is any 1-D array (a memory map too).

    The draw depends only on the seed, the step and the global batch (batch * grad_accum * processes),
    so one process at batch 8, grad-accum 2 at batch 4 and 2 processes at batch 4 train on the same rows."""
    rng = np.random.default_rng([options.seed, step])
    rows = options.batch * options.grad_accum * processes
    starts = rng.integers(0, len(ids) - seq_len + 1, size=rows)
    return np.stack([np.asarray(ids[s : s + seq_len], dtype=np.int64) for s in starts])


def row_length(options: TrainOptions, config, n_tokens: int) -> int:
    """Tokens per training row: `options.seq_len`, or min(max_seq_len, 256); refused when the model or the
    text cannot give one row."""
    seq_len = options.seq_len or min(config.max_seq_len, 256)
    if seq_len > config.max_seq_len:
        raise RequestError(
            f"--seq-len {seq_len} exceeds the model's max_seq_len {config.max_seq_len}"
        )
    if n_tokens <= seq_len:
        raise RequestError(
            f"the training text has {n_tokens} tokens, fewer than one row of {seq_len}"
        )
    return seq_len


def validation_loss(model, windows: list[np.ndarray], device) -> float:
    """Mean cross-entropy per token over held-out windows (all the same length)."""
    with torch.no_grad():
        batch = torch.as_tensor(np.stack(windows), device=device)
        total = 0.0
        for i in range(0, len(batch), 8):
            rows = batch[i : i + 8]
            total += float(model(rows, labels=rows).loss) * len(rows)
    return total / len(batch)


def run_training(
    model,
    train_ids: np.ndarray,
    held_ids: np.ndarray,
    options: TrainOptions,
    run_folder: Path,
    resume_state: dict[str, Any] | None = None,
    optimizer=None,
    on_step: Callable[[StepInfo], None] | None = None,
    extra_state: dict[str, Any] | None = None,
    teacher=None,
) -> dict[str, Any]:
    """Train `model` in place; returns the final state (step, elapsed, log, and the trained `model`: the
    same module, or with `options.fsdp` a whole copy on rank 0's CPU, None on the other ranks). Ctrl-C
    saves a checkpoint first (not with `options.fsdp`: the newest periodic checkpoint stays)."""
    from mhe_edge.models.attention import fast_attention, use_attention_core

    options.check()
    world = World.current()
    if options.fsdp and world.size == 1:
        raise RequestError(FSDP_NEEDS_PROCESSES)
    device = device_for(options.provider)
    if options.threads:
        torch.set_num_threads(options.threads)
    seq_len = row_length(options, model.config, len(train_ids))
    model.train()
    named_state = None
    if options.fsdp and optimizer is not None:
        # sharding replaces the parameters the optimizer holds: carry its state over, by name
        named_state = sharding.named_optimizer_state(model, optimizer)
        optimizer = None
    net = world.wrap(model, device, options.fsdp)
    if teacher is not None:  # each process runs it on its own rows: not wrapped, it never steps
        teacher.to(device)
    if optimizer is None:
        optimizer = make_optimizer(model, options)
    if named_state is not None:
        sharding.load_optimizer_state(model, optimizer, named_state)
    total = options.total_steps
    warmup = options.warmup if options.warmup is not None else min(200, max(1, total // 20))
    held = [held_ids[i : i + seq_len] for i in range(0, len(held_ids) - seq_len + 1, seq_len)][
        : options.eval_windows
    ]
    if not held:
        held = [held_ids] if len(held_ids) > 1 else []
    state = dict(resume_state or {"step": 0, "elapsed": 0.0, "log": []})
    step, elapsed, log = state["step"], state["elapsed"], state["log"]
    budget = options.minutes * 60 if options.minutes else None
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else _nothing()

    def save() -> dict[str, torch.Tensor]:
        """Checkpoint the step (rank 0 writes); returns the whole weights (rank 0's; {} elsewhere)."""
        if world.sharded:  # every rank gathers its shards to rank 0
            weights, optimizer_state = sharding.gather_whole(model, optimizer)
        elif world.rank == 0:  # one writer: the others hold the same weights
            weights, optimizer_state = model.state_dict(), optimizer.state_dict()
        if world.rank != 0:
            return {}
        save_training_state(
            run_folder,
            step,
            weights,
            optimizer_state,
            {"elapsed": elapsed, "log": log, "options": asdict(options), **(extra_state or {})},
        )
        return weights

    last_saved = step
    try:
        with use_attention_core(fast_attention), sharding.quiet_views():
            while step < total and (budget is None or elapsed < budget):
                started = time.perf_counter()
                fraction = elapsed / budget if budget else step / total
                lr = learning_rate(options, fraction, step, warmup)
                for group in optimizer.param_groups:
                    group["lr"] = lr
                optimizer.zero_grad(set_to_none=True)
                rows = batch_at(train_ids, step, options, seq_len, world.size)
                loss = _accumulate(net, teacher, rows, options, world, device, autocast)
                if (
                    step < options.freeze_steps
                ):  # after DDP's averaging, before clipping and the step
                    drop_frozen_gradients(model)
                torch.nn.utils.clip_grad_norm_(model.parameters(), options.grad_clip)
                optimizer.step()
                step += 1
                if device.type == "cuda":
                    torch.cuda.synchronize()
                seconds = time.perf_counter() - started
                # every process logs the mean loss and stops on rank 0's clock, so all stop together
                loss, elapsed = world.agree(loss, elapsed + seconds)
                info = StepInfo(
                    step,
                    None if budget else total,
                    loss,
                    lr,
                    rows.size / seconds,
                    elapsed,
                    elapsed / budget if budget else step / total,
                )
                done = step >= total or (budget is not None and elapsed >= budget)
                # sharded, every rank takes part in the forward (each gathers the units' weights)
                validates = world.rank == 0 or world.sharded
                if validates and held and (step % options.eval_every == 0 or done):
                    model.eval()
                    with autocast:
                        info.val_loss = validation_loss(model, held, device)
                    model.train()
                log.append({k: v for k, v in asdict(info).items() if v is not None})
                if on_step:
                    on_step(info)
                if step - last_saved >= options.checkpoint_every and not done:
                    save()
                    last_saved = step
    except KeyboardInterrupt as exc:
        # sharded, saving gathers from every rank: one interrupted inside a collective would never return
        if step > last_saved and not world.sharded:
            save()
            last_saved = step
        raise _interrupted(step, last_saved if last_saved > 0 else None, run_folder) from exc
    weights = save()
    world.barrier()  # the final checkpoint is whole before any process goes on
    if world.sharded:  # rank 0 goes on with the whole model (evaluation, the model folder)
        model = _whole_model(model.config, weights) if world.rank == 0 else None
    if model is not None:
        model.eval()
    return {"step": step, "elapsed": elapsed, "log": log, "seq_len": seq_len, "model": model}


def _whole_model(config, weights: dict[str, torch.Tensor]):
    """A plain model (on the CPU) holding the gathered weights of a sharded one."""
    from mhe_edge.models import build_model

    model = build_model(config)
    model.load_state_dict(weights, strict=True)
    return model


def _accumulate(
    net, teacher, rows: np.ndarray, options: TrainOptions, world, device, autocast
) -> float:
    """Forward and backward this process's share of `rows`, micro-batch by micro-batch; the gradients end
    as those of the mean loss over all the rows (each micro-batch's mean loss / grad_accum, averaged over
    processes by DDP). With a teacher the loss is uptraining's (cross-entropy and the KL to the teacher,
    each a mean per predicted token, so the KL is averaged exactly like the cross-entropy). Returns this
    process's mean loss."""
    share = options.batch * options.grad_accum
    mine = rows[world.rank * share : (world.rank + 1) * share]
    total = 0.0
    for index in range(options.grad_accum):
        micro = torch.as_tensor(
            mine[index * options.batch : (index + 1) * options.batch], device=device
        )
        last = index == options.grad_accum - 1
        with world.no_sync(net, last):  # DDP averages gradients once, after the last micro-batch
            with autocast:
                loss = uptraining_loss(net, teacher, micro, options.distill_weight)
                loss = loss / options.grad_accum
            loss.backward()
        total += float(loss.detach())
    return total


class RunInterrupted(TrainingInterrupted):
    """Ctrl-C or SIGTERM during training, with where it stopped: `step` done, `checkpoint` the newest step
    saved (None: none was)."""

    def __init__(self, message: str, step: int, checkpoint: int | None):
        super().__init__(message)
        self.step, self.checkpoint = step, checkpoint


def _interrupted(step: int, checkpoint: int | None, run_folder: Path) -> RunInterrupted:
    """The error for Ctrl-C at `step`; it says that a checkpoint was saved only when one exists."""
    if checkpoint is None:
        message = f"interrupted at step {step}, before any checkpoint was saved"
    else:
        message = (
            f"interrupted at step {step}; a checkpoint of step {checkpoint} was saved in"
            f" {run_folder.name}/checkpoints: continue with `mhe-edge train [TEXT] -o {run_folder}"
            " --resume` (TEXT: the run's text files again, when it was trained on files)"
        )
    return RunInterrupted(message, step, checkpoint)


def make_optimizer(model, options: TrainOptions):
    fused = {"fused": True} if next(model.parameters()).device.type == "cuda" else {}
    return torch.optim.AdamW(
        param_groups(model, options.weight_decay), lr=options.lr, betas=(0.9, 0.95), **fused
    )


class _nothing:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False
