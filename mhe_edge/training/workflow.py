"""`train`: text -> tokenizer -> decoder -> a trained model folder (the Hugging Face layout plus the tokenizer),
with a JSON-lines log, a loss curve and a record of the corpus so `eval` can find the held-out text again.

Run folder, while training and after:
  .mhe-edge, training.json (corpus, tokenizer, options, results), tokenizer.json (+ its two config files),
  checkpoints/ (resumable), then config.json, model.safetensors, generation_config.json, train_log.jsonl, loss.png.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mhe_edge.errors import TrainingInterrupted
from mhe_edge.files import check_output, scratch_folder, staged_output
from mhe_edge.results import Result
from mhe_edge.text.corpus import RECORD_FILE
from mhe_edge.training.loop import RunInterrupted, StepInfo, TrainOptions

LOG_FILE, PLOT_FILE = "train_log.jsonl", "loss.png"
SAMPLE_PROMPT = "The "
BIGRAM_TOKENS = 1 << 20  # the bigram baseline is fit on at most this many training ids


@dataclass
class TrainReport(Result):
    path: str
    config: dict[str, Any]
    corpus: dict[str, Any]
    tokenizer: dict[str, Any]
    steps: int
    seconds: float
    tokens_trained: int
    held_out: dict[
        str, Any
    ]  # bits_per_byte, cross_entropy, perplexity; unigram and bigram baselines
    sample: str  # greedy text from SAMPLE_PROMPT
    files: list[str] = field(default_factory=list)


def train(
    output: str | os.PathLike,
    text_files: Sequence[str | os.PathLike] | None = None,
    *,
    attention: str | None = None,
    preset: str | None = None,
    tokenizer: str | None = None,
    vocab_size: int | None = None,
    options: TrainOptions | Mapping[str, Any] | None = None,
    resume: bool = False,
    force: bool = False,
    on_step: Callable[[StepInfo], None] | None = None,
    on_stage: Callable[[str], None] | None = None,
    init_from: str | os.PathLike | None = None,
    teacher: str | os.PathLike | None = None,
    **overrides: Any,
) -> TrainReport:
    """Train a decoder on text files (default: Python's documentation text) and write a model folder.

    `attention` (default mhe-mul), `preset` (default tiny), `tokenizer`: "bpe" (the default: byte-level BPE
    learned from the text, `vocab_size` tokens, default the preset's vocabulary), "bytes" (one token per
    byte), or the path of a `tokenizer.json`. `overrides` are config fields (as `init_model` takes).
    `options`: TrainOptions, or a mapping of only the TrainOptions fields to set.

    With `resume`, `output` is a run folder from an earlier `train`, continued from its newest checkpoint.
    Whatever is given must match the recorded run (a RequestError names what differs), except the budget
    (`steps`, `minutes`: a larger `steps` extends the run) and `provider`/`threads`; `init_from` and
    `teacher` must be the recorded models (by fingerprint), and the recorded teacher is read again when
    `teacher` is not given.

    A new run is trained in a staging folder beside `output` and appears whole when it ends (interrupted
    after a checkpoint, it appears as a resumable run if nothing was there before). With `force` an
    existing run is replaced only then: a refusal, Ctrl-C or crash leaves it byte for byte as it was.

    Uptraining: `init_from` starts from a model folder with a tokenizer (e.g. from `convert`) instead of
    random weights, taking its config and tokenizer; `teacher` (any model over the same vocabulary) adds a KL
    term on its logits (`options.distill_weight`); `options.freeze_steps` trains only the converted attention
    tensors first.

    Example: `mhe_edge.train("my-model", attention="mhe-mul", preset="tiny", options=TrainOptions(steps=300))`
    """
    from mhe_edge.training.distributed import processes
    from mhe_edge.training.plan import new_plan, resume_plan

    stage = on_stage or (lambda name: None)
    folder = Path(output)
    if resume:
        plan = resume_plan(
            folder, text_files, attention, preset, tokenizer, vocab_size, options, overrides, stage,
            init_from, teacher,
        )  # fmt: skip
    else:
        plan = new_plan(
            folder, text_files, attention, preset, tokenizer, vocab_size, options, overrides, force,
            stage, init_from, teacher,
        )  # fmt: skip
    # every process checked the same request; under torchrun they now join, and rank 0 alone writes
    with processes(plan.options.provider) as world:
        built = _build(
            plan, folder
        )  # before any file: an interrupt inside torch's lazy imports breaks them
        if resume or world.rank != 0:
            return _train(plan, built, folder, folder, on_step, stage, world)
        return _train_new_run(plan, built, folder, force, on_step, stage, world)


def _build(plan, folder: Path):
    """The model and its optimizer (a resumed run's restored from its newest checkpoint)."""
    from mhe_edge.models import build_model
    from mhe_edge.training.checkpoints import load_training_state
    from mhe_edge.training.loop import device_for, make_optimizer

    model = build_model(plan.config, seed=plan.options.seed)
    if plan.initial is not None and not plan.resumed:  # uptraining: the converted weights, in fp32
        model.load_state_dict(plan.initial.state_dict())
        plan.initial = None  # one copy of the weights in memory
    if plan.options.provider == "cuda" and not plan.options.fsdp:  # sharding moves only the shards
        model.to(device_for("cuda"))
    optimizer = make_optimizer(model, plan.options)
    resume_state = load_training_state(folder, model, optimizer) if plan.resumed else None
    return model, optimizer, resume_state


def _train_new_run(plan, built, folder: Path, force: bool, on_step, stage, world) -> TrainReport:
    """A new run, trained in a staging folder and published whole (or resumable, see `train`)."""
    replacing = folder.exists()
    interrupted: RunInterrupted | None = None
    kept = f"; {str(folder)!r} is as it was" if replacing else ""
    with staged_output(folder, force=force, folder=True) as run_folder:
        try:
            plan.tokenizer.save(run_folder)
            _write_record(run_folder, plan.record)
            report = _train(plan, built, run_folder, folder, on_step, stage, world)
        except RunInterrupted as exc:
            if replacing or exc.checkpoint is None:
                raise TrainingInterrupted(
                    f"interrupted at step {exc.step}; nothing was written{kept}"
                ) from exc
            interrupted = exc  # nothing was there: the partial run appears, resumable
        except KeyboardInterrupt as exc:  # before or after the loop: the staged run goes
            raise TrainingInterrupted(f"interrupted; nothing was written{kept}") from exc
    if interrupted is not None:
        raise TrainingInterrupted(
            f"interrupted at step {interrupted.step}; a checkpoint of step {interrupted.checkpoint} is"
            f" saved in {folder.name}/checkpoints: continue with"
            f" `mhe-edge train {_text_arguments(plan.corpus)}-o {folder} --resume`"
        ) from interrupted
    return report


def _train(plan, built, run_folder: Path, shown: Path, on_step, stage, world) -> TrainReport:
    """Train (checkpoints in `run_folder`), evaluate and write the model files; `shown` is the run folder
    as the user named it. Processes other than rank 0 train and write nothing."""
    from mhe_edge.training.loop import run_training

    options, record = plan.options, plan.record
    model, optimizer, resume_state = built
    stage("train")
    result = run_training(
        model,
        plan.train_ids,
        plan.held_ids,
        options,
        run_folder,
        resume_state,
        optimizer,
        on_step,
        teacher=plan.teacher,
    )
    rows = options.batch * options.grad_accum * world.size  # per step, all processes
    tokens = result["step"] * rows * result["seq_len"]
    if world.rank != 0:  # rank 0 evaluates and writes
        return TrainReport(
            str(shown), plan.config.to_dict(), plan.corpus.record(), record["tokenizer"],
            result["step"], result["elapsed"], tokens, {}, "", [],
        )  # fmt: skip
    model = result["model"]  # sharded (--fsdp): a whole copy of the trained weights
    model.to("cpu")
    stage("evaluate")
    held_out = evaluate_held_out(
        model, plan.tokenizer, plan.corpus, plan.train_ids, result["seq_len"]
    )
    sample = sample_text(model, plan.tokenizer, SAMPLE_PROMPT, 48)
    files = _publish_outputs(run_folder, model, result["log"])
    record.update(
        options=asdict(options),
        processes=world.size,  # with options' batch and grad_accum: the rows per step, as trained
        results={
            "steps": result["step"],
            "seconds": result["elapsed"],
            "held_out": held_out,
            "sample": sample,
        },
    )
    _write_record(run_folder, record)
    return TrainReport(
        str(shown),
        plan.config.to_dict(),
        plan.corpus.record(),
        record["tokenizer"],
        result["step"],
        result["elapsed"],
        tokens,
        held_out,
        sample,
        files,
    )


def _text_arguments(corpus) -> str:
    """The TEXT a resumed run is given again (the record names files, never where they are), as shown."""
    from mhe_edge.text.corpus import BUILTIN

    return "" if corpus.name == BUILTIN else f"{corpus.name.replace(', ', ' ')} "


def _write_record(folder: Path, record: dict[str, Any]) -> None:
    with staged_output(check_output(folder / RECORD_FILE, force=True), force=True) as path:
        path.write_text(json.dumps(record, indent=2) + "\n")


def _publish_outputs(folder: Path, model, log: list[dict[str, Any]]) -> list[str]:
    """The model files, the log and the plot, each published through the writing path into the run folder
    (a resumed run's folder is live: each file is replaced whole, never written through a link)."""
    from mhe_edge.models.folder import write_model_files

    with scratch_folder(folder, ".outputs.", "") as scratch:
        names = write_model_files(model, scratch)
        (scratch / LOG_FILE).write_text("".join(json.dumps(entry) + "\n" for entry in log))
        names.append(LOG_FILE)
        if log:
            plot_losses(log, scratch / PLOT_FILE)
            names.append(PLOT_FILE)
        for name in names:
            with staged_output(check_output(folder / name, force=True), force=True) as path:
                os.replace(scratch / name, path)
    return names


def evaluate_held_out(
    model, tokenizer, corpus, train_ids: np.ndarray, window: int
) -> dict[str, Any]:
    """The model's bits per byte on the held-out text, beside a unigram and a bigram model of the same text."""
    from mhe_edge.text.scoring import bigram_score, score, unigram_bits_per_byte

    ids = tokenizer.encode_array(corpus.held_out)
    n_bytes = len(corpus.held_out.encode("utf-8"))
    result = score(torch_logits(model), ids, n_bytes, tokenizer.bos_token_id, window).to_dict()
    result["unigram_bits_per_byte"] = unigram_bits_per_byte(corpus.held_out)
    result["bigram_bits_per_byte"] = bigram_score(
        np.asarray(train_ids[:BIGRAM_TOKENS]).tolist(),
        ids,
        n_bytes,
        tokenizer.bos_token_id,
        tokenizer.vocab_size,
    ).bits_per_byte
    return result


def torch_logits(model):
    import torch

    def run(ids: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return model(torch.as_tensor(ids)).logits.float().numpy()

    return run


def sample_text(model, tokenizer, prompt: str, new_tokens: int) -> str:
    import torch

    ids = torch.tensor([tokenizer.encode(prompt)])
    room = model.config.max_seq_len - ids.shape[1]
    new = model.generate(ids, min(new_tokens, max(room, 0)))
    return prompt + tokenizer.decode(new[0].tolist())


def plot_losses(log: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(7, 4))
    axis.plot([e["step"] for e in log], [e["loss"] for e in log], lw=0.8, label="training loss")
    validated = [e for e in log if "val_loss" in e]
    if validated:
        axis.plot(
            [e["step"] for e in validated],
            [e["val_loss"] for e in validated],
            "o-",
            label="held-out loss",
        )
    axis.set_xlabel("step")
    axis.set_ylabel("cross-entropy (nats per token)")
    axis.legend()
    axis.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
