"""Uptraining a converted model (`train --init-from`): distillation from a teacher and a freeze-then-all schedule.

The GQA paper uptrains converted checkpoints with a few percent of the original compute. Two things help a
short run: the teacher's whole next-token distribution (KL on logits) carries more per token than the one
label, and training first only what the conversion changed (the shared Q/K/V projections and the head
embeddings) lets them settle before the untouched rest of the network starts adapting to their errors.
"""

from __future__ import annotations

import re

import torch
import torch.nn.functional as F

from mhe_edge.errors import CheckpointError

# What a conversion rewrites: the Q/K/V projections and the head embeddings of every attention layer.
CONVERTED = re.compile(
    r"^blocks\.\d+\.attn\.(q_proj|k_proj|v_proj|q_head_embeddings|k_head_embeddings|v_head_embeddings)\b"
)


def distillation_loss(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """KL(teacher || student) per predicted token, in nats: logits (B, T, V) each; the last position predicts
    nothing in the data, so it is left out as the cross-entropy leaves it out."""
    s = F.log_softmax(student[:, :-1].float(), dim=-1).flatten(0, 1)
    t = F.log_softmax(teacher[:, :-1].float(), dim=-1).flatten(0, 1)
    return F.kl_div(s, t, log_target=True, reduction="batchmean")


def uptraining_loss(model, teacher, rows: torch.Tensor, weight: float) -> torch.Tensor:
    """(1 - weight) * cross-entropy + weight * KL to the teacher; the plain loss without a teacher."""
    output = model(rows, labels=rows)
    if teacher is None:
        return output.loss
    with torch.no_grad():
        target = teacher(rows).logits
    return (1 - weight) * output.loss + weight * distillation_loss(output.logits, target)


def drop_frozen_gradients(model) -> None:
    """During the freeze phase: only the converted attention tensors step (AdamW skips a parameter whose
    gradient is None, weight decay included)."""
    for name, parameter in model.named_parameters():
        if not CONVERTED.match(name):
            parameter.grad = None


def load_teacher(path, vocab_size: int) -> torch.nn.Module:
    """The teacher (any model mhe-edge reads), checked to predict over the student's vocabulary."""
    from mhe_edge.models import load_model

    teacher = load_model(path)
    if teacher.config.arch != "decoder":
        raise CheckpointError(
            f"the teacher {getattr(path, 'name', path)} is an encoder; distillation needs a decoder"
        )
    if teacher.config.vocab_size != vocab_size:
        raise CheckpointError(
            f"the teacher predicts {teacher.config.vocab_size} tokens, the student {vocab_size};"
            " distillation needs one vocabulary"
        )
    for parameter in teacher.parameters():
        parameter.requires_grad_(False)
    return teacher.eval()


def starting_point(path, given: list[str]):
    """The model and tokenizer `train --init-from` starts from: a decoder folder that carries a tokenizer.
    `given` are the flags of the shape and tokenizer options asked for beside it (refused: the folder
    decides them)."""
    from mhe_edge.errors import RequestError
    from mhe_edge.models import load_model
    from mhe_edge.text.tokenizer import has_tokenizer, load_tokenizer

    if given:
        raise RequestError(
            "--init-from takes the model's shape and tokenizer from the folder; drop"
            f" {', '.join(sorted(set(given)))}"
        )
    model = load_model(path)
    if model.config.arch != "decoder":
        raise RequestError("--init-from needs a decoder: train teaches next-token prediction")
    if not has_tokenizer(path):
        raise RequestError(
            f"{getattr(path, 'name', path)} has no tokenizer.json: --init-from needs the folder's tokenizer"
        )
    return model, load_tokenizer(path)


def model_fingerprint(model) -> str:
    """sha256 of a model's config and weights (names, dtypes, shapes, bytes): the same model in any file
    layout (one file or shards, a folder or a checkpoint) has one fingerprint. A resumed run compares it
    to refuse another starting point or teacher than the recorded one."""
    import hashlib
    import json

    digest = hashlib.sha256(json.dumps(model.config.to_dict(), sort_keys=True).encode("utf-8"))
    for name, tensor in sorted(model.state_dict().items()):
        flat = tensor.detach().cpu().contiguous().reshape(-1)
        digest.update(f"{name}:{flat.dtype}:{tuple(tensor.shape)}".encode())
        digest.update(flat.view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()
