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
from mhe_edge.training.checkpoints import save_training_state

DEFAULT_STEPS = 1000


@dataclass
class TrainOptions:
    steps: int | None = None  # optimizer steps; with neither steps nor minutes: DEFAULT_STEPS
    minutes: float | None = (
        None  # stop after this much training time (and decay the learning rate over it)
    )
    seq_len: int | None = None  # tokens per training row; None: min(the model's max_seq_len, 256)
    batch: int = declared.TRAIN_BATCH.default  # rows per step
    lr: float = declared.LR.default  # peak learning rate
    min_lr_ratio: float = 0.1  # the cosine decays to lr * this
    warmup: int | None = None  # linear warmup steps; None: 5% of the steps (at most 200)
    weight_decay: float = (
        0.1  # AdamW decay, for weight matrices and embedding tables only (see param_groups)
    )
    grad_clip: float = 1.0  # clip the global gradient norm to this
    seed: int = 0  # weights, batches and everything random
    eval_every: int = 100  # validate on held-out text every this many steps (and at the end)
    eval_windows: int = 32  # at most this many held-out windows per validation
    checkpoint_every: int = 200  # save a resumable checkpoint every this many steps (and on Ctrl-C)
    provider: str = "cpu"  # "cpu", or "cuda" (bf16 autocast)
    threads: int | None = None  # PyTorch threads on the CPU (default: PyTorch's choice)
    freeze_steps: int = 0  # uptraining: the first steps train only the converted attention tensors
    distill_weight: float = 0.5  # with a teacher: loss = (1 - this) * cross-entropy + this * KL

    def check(self) -> None:
        declared.check_all(
            (declared.STEPS, self.steps),
            (declared.MINUTES, self.minutes),
            (declared.TRAIN_SEQ_LEN, self.seq_len),
            (declared.TRAIN_BATCH, self.batch),
            (declared.LR, self.lr),
            (declared.TRAIN_SEED, self.seed),
            (declared.PROVIDER, self.provider),
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
        return (
            self.steps
            if self.steps is not None
            else (10_000_000 if self.minutes else DEFAULT_STEPS)
        )


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
        return torch.device("cuda")
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


def batch_at(ids: np.ndarray, step: int, options: TrainOptions, seq_len: int) -> np.ndarray:
    """The rows of step `step`: random windows of `seq_len` ids, drawn from a generator seeded by (seed, step)."""
    rng = np.random.default_rng([options.seed, step])
    starts = rng.integers(0, len(ids) - seq_len + 1, size=options.batch)
    return np.stack([ids[s : s + seq_len] for s in starts])


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
    """Train `model` in place; returns the final state (step, elapsed, log). Ctrl-C saves a checkpoint first."""
    from mhe_edge.models.attention import fast_attention, use_attention_core
    from mhe_edge.training.uptraining import drop_frozen_gradients, uptraining_loss

    options.check()
    device = device_for(options.provider)
    if options.threads:
        torch.set_num_threads(options.threads)
    seq_len = options.seq_len or min(model.config.max_seq_len, 256)
    if seq_len > model.config.max_seq_len:
        raise RequestError(
            f"seq-len {seq_len} exceeds the model's max_seq_len {model.config.max_seq_len}"
        )
    if len(train_ids) <= seq_len:
        raise RequestError(
            f"the training text has {len(train_ids)} tokens, fewer than one row of {seq_len}"
        )
    model.to(device).train()
    if teacher is not None:
        teacher.to(device)
    if optimizer is None:
        optimizer = make_optimizer(model, options)
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

    def save() -> None:
        save_training_state(
            run_folder,
            step,
            model,
            optimizer,
            {"elapsed": elapsed, "log": log, "options": asdict(options), **(extra_state or {})},
        )

    last_saved = step
    try:
        with use_attention_core(fast_attention):
            while step < total and (budget is None or elapsed < budget):
                started = time.perf_counter()
                fraction = elapsed / budget if budget else step / total
                lr = learning_rate(options, fraction, step, warmup)
                for group in optimizer.param_groups:
                    group["lr"] = lr
                rows = torch.as_tensor(batch_at(train_ids, step, options, seq_len), device=device)
                with autocast:
                    loss = uptraining_loss(model, teacher, rows, options.distill_weight)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                if step < options.freeze_steps:
                    drop_frozen_gradients(model)
                torch.nn.utils.clip_grad_norm_(model.parameters(), options.grad_clip)
                optimizer.step()
                step += 1
                if device.type == "cuda":
                    torch.cuda.synchronize()
                seconds = time.perf_counter() - started
                elapsed += seconds
                info = StepInfo(
                    step,
                    None if budget else total,
                    float(loss.detach()),
                    lr,
                    rows.numel() / seconds,
                    elapsed,
                    elapsed / budget if budget else step / total,
                )
                done = step >= total or (budget is not None and elapsed >= budget)
                if held and (step % options.eval_every == 0 or done):
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
        if step > last_saved:
            save()
        raise TrainingInterrupted(
            f"interrupted at step {step}; a checkpoint was saved in {run_folder.name}/checkpoints:"
            f" continue with `mhe-edge train -o {run_folder} --resume`"
        ) from exc
    save()
    model.eval()
    return {"step": step, "elapsed": elapsed, "log": log, "seq_len": seq_len}


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
