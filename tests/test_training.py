"""Training: the fused attention core equals the reference, the loss is transformers', padded batches equal
prompts alone, and training is seeded, resumable and moves the head embeddings apart."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from mhe_edge.config import preset_config
from mhe_edge.models import build_model, use_attention_core
from mhe_edge.models.attention import fast_attention
from mhe_edge.text.sampling import SamplingOptions
from mhe_edge.training.loop import TrainOptions, param_groups, run_training

KINDS = ["mha", "mqa", "gqa", "mhe-add", "mhe-mul"]


def _model(kind, **extra):
    config = preset_config(
        "tiny",
        attention=kind,
        n_layers=2,
        d_model=32,
        n_heads=4,
        d_ff=64,
        vocab_size=97,
        max_seq_len=64,
        eos_token_id=0,
        bos_token_id=0,
        **extra,
    )
    return build_model(config, seed=3)


@pytest.mark.parametrize("position", ["learned", "rope"])
@pytest.mark.parametrize("kind", KINDS)
def test_fast_core_equals_reference_with_gradients(kind, position):
    model = _model(kind, position=position)
    ids = torch.randint(0, 97, (3, 10), generator=torch.Generator().manual_seed(1))
    mask = torch.ones(3, 10, dtype=torch.long)
    mask[1, :4] = (
        0  # a left-padded row: no loss is computed from its padding (label -100 after a pad)
    )
    after_pad = torch.cat([torch.zeros_like(mask[:, :1]), mask[:, :-1]], dim=1) == 0
    labels = ids.masked_fill(after_pad, -100)
    reference = model(ids, attention_mask=mask, labels=labels)
    reference.loss.backward()
    want = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    with use_attention_core(fast_attention):
        fast = model(ids, attention_mask=mask, labels=labels)
        fast.loss.backward()
        # with a cache: the decode-shaped call (one query, a past) goes through the masked branch
        _, cache = model(ids[:, :6])
        step = model(ids[:, 6:7], cache).logits
    torch.testing.assert_close(
        fast.logits[mask == 1], reference.logits[mask == 1], atol=2e-5, rtol=1e-4
    )
    torch.testing.assert_close(step, model(ids[:, :7]).logits[:, 6:7], atol=2e-5, rtol=1e-4)
    for name, parameter in model.named_parameters():
        # MHE-ADD's key embeddings shift every score of a head by the same amount: softmax drops them, the
        # fused core never reads them (no gradient) and the reference's gradient is zero up to rounding
        got = parameter.grad if parameter.grad is not None else torch.zeros_like(parameter)
        torch.testing.assert_close(got, want[name], atol=1e-5, rtol=1e-3, msg=name)


def test_loss_is_shifted_cross_entropy_with_ignore_index():
    model = _model("mhe-mul")
    ids = torch.randint(1, 97, (2, 9), generator=torch.Generator().manual_seed(0))
    labels = ids.clone()
    labels[0, 5] = -100
    out = model(ids, labels=labels)
    logits = out.logits[:, :-1].reshape(-1, 97)
    targets = labels[:, 1:].reshape(-1)
    keep = targets != -100
    assert torch.allclose(out.loss, F.cross_entropy(logits[keep], targets[keep]))
    logits_again, cache = out  # still unpacks as (logits, cache)
    assert logits_again is out.logits and len(cache) == 2


@pytest.mark.parametrize("kind", ["mha", "mhe-add", "mhe-mul"])
@pytest.mark.parametrize("position", ["learned", "rope"])
def test_left_padded_batch_equals_each_prompt_alone(kind, position):
    model = _model(kind, position=position)
    prompts = [[5, 6, 7, 8, 9, 10], [11, 12], [13, 14, 15, 16]]
    width = max(map(len, prompts))
    ids = torch.tensor([[0] * (width - len(p)) + p for p in prompts])
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
    batch = model.generate(ids, 8, attention_mask=mask)
    for row, prompt in enumerate(prompts):
        alone = model.generate(torch.tensor([prompt]), 8)
        n = alone.shape[1]
        assert batch[row, :n].tolist() == alone[0].tolist()


def test_seeded_sampling_repeats_and_differs_from_greedy():
    model = _model("mhe-mul")
    ids = torch.tensor([[3, 4, 5]])
    options = SamplingOptions(temperature=1.5, top_k=40, top_p=0.95, seed=7)
    first, second = (
        model.generate(ids, 12, sampling=options),
        model.generate(ids, 12, sampling=options),
    )
    assert first.tolist() == second.tolist()
    assert first.tolist() != model.generate(ids, 12).tolist()


def _text_ids(n=20_000):
    rng = np.random.default_rng(0)  # a learnable stream: a repeating phrase with noise
    phrase = np.array([5, 17, 33, 8, 61, 2, 44, 90, 12])
    ids = np.tile(phrase, n // len(phrase) + 1)[:n]
    noise = rng.random(n) < 0.05
    ids[noise] = rng.integers(1, 97, noise.sum())
    return ids


def test_training_learns_and_is_reproducible(tmp_path):
    ids = _text_ids()
    options = dict(steps=40, batch=8, seq_len=32, lr=3e-3, eval_every=20, checkpoint_every=1000)
    runs = []
    for name in ("a", "b"):
        model = _model("mhe-mul")
        (tmp_path / name).mkdir()
        state = run_training(
            model, ids[:18_000], ids[18_000:], TrainOptions(**options), tmp_path / name
        )
        runs.append((model, state))
    (a, state_a), (b, _) = runs
    assert (
        state_a["log"][-1]["val_loss"] < 0.5 * state_a["log"][0]["loss"]
    )  # far below the start (~4.6)
    for (name, pa), pb in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(pa, pb), name


def test_resume_continues_exactly(tmp_path):
    ids = _text_ids()
    options = dict(batch=8, seq_len=32, lr=3e-3, eval_every=1000, checkpoint_every=1000)
    whole = _model("mhe-add")
    (tmp_path / "whole").mkdir()
    run_training(whole, ids, ids[:500], TrainOptions(steps=30, **options), tmp_path / "whole")
    from mhe_edge.training.checkpoints import load_training_state
    from mhe_edge.training.loop import make_optimizer

    part = _model("mhe-add")
    (tmp_path / "part").mkdir()
    from mhe_edge.errors import TrainingInterrupted

    with pytest.raises(
        TrainingInterrupted, match="--resume"
    ):  # Ctrl-C saves a checkpoint on the way out
        run_training(
            part,
            ids,
            ids[:500],
            TrainOptions(steps=30, **options),
            tmp_path / "part",
            on_step=_stop_at(12),
        )
    resumed = _model("mhe-add")
    optimizer = make_optimizer(resumed, TrainOptions(**options))
    state = load_training_state(tmp_path / "part", resumed, optimizer)
    assert state["step"] == 12
    run_training(
        resumed,
        ids,
        ids[:500],
        TrainOptions(steps=30, **options),
        tmp_path / "part",
        state,
        optimizer,
    )
    for (name, pa), pb in zip(whole.state_dict().items(), resumed.state_dict().values()):
        torch.testing.assert_close(pa, pb, atol=1e-6, rtol=1e-5, msg=name)


def test_grad_accum_equals_the_larger_batch(tmp_path):
    """grad-accum 2 at batch 4 trains on the same rows as batch 8 and ends at the same weights."""
    ids = _text_ids()
    options = dict(steps=12, seq_len=32, lr=3e-3, eval_every=1000, checkpoint_every=1000)
    ends = []
    for name, shape in (("whole", dict(batch=8)), ("accum", dict(batch=4, grad_accum=2))):
        # MHE-ADD: its key embeddings get no gradient (accumulation must cope). No K bias: softmax drops it,
        # so its true gradient is 0 and AdamW would turn the rounding noise into steps of size lr
        model = _model("mhe-add", qkv_bias=False)
        (tmp_path / name).mkdir()
        state = run_training(
            model, ids, ids[:500], TrainOptions(**options, **shape), tmp_path / name
        )
        ends.append((model, state["log"]))
    (whole, whole_log), (accum, accum_log) = ends
    for (name, pa), pb in zip(whole.state_dict().items(), accum.state_dict().values()):
        torch.testing.assert_close(pa, pb, atol=1e-4, rtol=0, msg=name)
    assert abs(whole_log[-1]["loss"] - accum_log[-1]["loss"]) < 1e-5
    # and they moved: a different global batch ends elsewhere
    other = _model("mhe-add", qkv_bias=False)
    (tmp_path / "other").mkdir()
    run_training(other, ids, ids[:500], TrainOptions(**options, batch=4), tmp_path / "other")
    assert max((a - b).abs().max() for a, b in zip(whole.parameters(), other.parameters())) > 1e-3


def test_uptraining_accumulates_the_kl_like_the_loss_and_freezes_before_the_step(tmp_path):
    """With a teacher and a freeze, grad-accum 2 at batch 4 still ends at batch 8's weights (the KL is
    averaged over the micro-batches as the cross-entropy is); the freeze keeps every tensor but the converted
    attention at its start, and the teacher changes the run."""
    from mhe_edge.training.uptraining import CONVERTED

    ids = _text_ids()
    teacher = _model("mha").eval()
    for parameter in teacher.parameters():
        parameter.requires_grad_(False)
    options = dict(steps=6, seq_len=32, lr=3e-3, eval_every=1000, checkpoint_every=1000)
    uptraining = dict(freeze_steps=3, distill_weight=0.7)
    ends = {}
    for name, shape, extra in (
        ("whole", dict(batch=8), uptraining),
        ("accum", dict(batch=4, grad_accum=2), uptraining),
        ("frozen", dict(batch=8), dict(uptraining, steps=3)),
        ("alone", dict(batch=8), {}),
    ):
        model = _model("mhe-mul")
        (tmp_path / name).mkdir()
        run_options = TrainOptions(**{**options, **shape, **extra})
        with_teacher = teacher if extra else None
        state = run_training(
            model, ids, ids[:500], run_options, tmp_path / name, teacher=with_teacher
        )
        ends[name] = (model.state_dict(), state["log"])
    (whole, whole_log), (accum, accum_log) = ends["whole"], ends["accum"]
    for name, value in whole.items():
        torch.testing.assert_close(value, accum[name], atol=1e-4, rtol=0, msg=name)
    assert abs(whole_log[-1]["loss"] - accum_log[-1]["loss"]) < 1e-5
    start = _model("mhe-mul").state_dict()
    frozen = ends["frozen"][0]
    moved = {k for k in start if not torch.equal(start[k], frozen[k])}
    assert moved and all(CONVERTED.match(k) for k in moved), sorted(moved)
    assert any(not CONVERTED.match(k) and not torch.equal(start[k], whole[k]) for k in start)
    assert abs(ends["alone"][1][0]["loss"] - whole_log[0]["loss"]) > 1e-3  # the KL is in the loss


def _stop_at(step):
    def on_step(info):
        if info.step == step:
            raise KeyboardInterrupt  # as Ctrl-C would, mid-run

    return on_step


def test_head_embeddings_train_apart_and_are_not_decayed(tmp_path):
    model = _model("mhe-mul")
    groups = param_groups(model, 0.1)
    no_decay = {id(p) for p in groups[1]["params"]}
    assert all(id(e) in no_decay for b in model.blocks for e in b.attn.head_embeddings())
    before = [e.detach().clone() for b in model.blocks for e in b.attn.head_embeddings()]
    run_training(
        model,
        _text_ids(),
        _text_ids(600),
        TrainOptions(steps=30, batch=8, seq_len=32, lr=3e-3),
        tmp_path,
    )
    after = [e.detach() for b in model.blocks for e in b.attn.head_embeddings()]
    assert all(not torch.equal(x, y) for x, y in zip(before, after))  # they learn
    for e in after:  # heads differ: pairwise distances are a sizeable share of the embeddings' norm
        assert (
            torch.cdist(e, e).sum() / (e.shape[0] * (e.shape[0] - 1)) > 0.2 * e.norm(dim=1).mean()
        )
