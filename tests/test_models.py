"""The reference modules against the definitions in docs/mhe-algebra.md."""

import math

import pytest
import torch
import torch.nn.functional as F
from conftest import ALL_KINDS, tiny_model


def per_head_loop(attn, x, causal):
    """MHE attention written head by head, straight from the paper's definition (no cache)."""
    B, T, _ = x.shape
    n, d = attn.n_heads, attn.head_dim
    q, k, v = attn.q_proj(x), attn.k_proj(x), attn.v_proj(x)  # each (B, T, d)
    e_q, e_k, e_v = attn.head_embeddings()
    combine = (lambda a, b: a + b) if attn.attention == "mhe-add" else (lambda a, b: a * b)
    outs = []
    for i in range(n):
        qi, ki, vi = combine(q, e_q[i]), combine(k, e_k[i]), combine(v, e_v[i])
        scores = qi @ ki.transpose(1, 2) / math.sqrt(d)
        if causal:
            scores = scores.masked_fill(torch.ones(T, T, dtype=torch.bool).triu(1), float("-inf"))
        outs.append(F.softmax(scores, -1) @ vi)
    return attn.out_proj(torch.cat(outs, -1))


@pytest.mark.parametrize("attention", ["mhe-add", "mhe-mul"])
@pytest.mark.parametrize("causal", [False, True])
def test_mhe_module_equals_per_head_definition(attention, causal):
    model = tiny_model(attention=attention, seed=1)
    attn = model.blocks[0].attn
    with torch.no_grad():  # move the embeddings well away from their init so they matter
        for e in attn.head_embeddings():
            e.copy_(torch.randn_like(e))
        x = torch.randn(2, 7, model.config.d_model)
        got, _ = attn(x, causal=causal)
        want = per_head_loop(attn, x, causal)
    assert (got - want).abs().max() < 1e-5


def _decoder_logits(model, ids):
    with torch.no_grad():
        return model(ids)[0]


def test_mhe_add_key_embeddings_have_no_effect_but_value_embeddings_do():
    model = tiny_model(attention="mhe-add", seed=2)
    ids = torch.randint(0, model.config.vocab_size, (2, 9))
    base = _decoder_logits(model, ids)
    attn = model.blocks[0].attn
    with torch.no_grad():
        attn.k_head_embeddings.add_(torch.randn_like(attn.k_head_embeddings) * 3)
    assert (_decoder_logits(model, ids) - base).abs().max() < 1e-4
    with torch.no_grad():
        attn.v_head_embeddings.add_(torch.randn_like(attn.v_head_embeddings))
    assert (_decoder_logits(model, ids) - base).abs().max() > 1e-2


def test_mhe_mul_is_invariant_to_scaling_query_and_key_embeddings_inversely():
    model = tiny_model(attention="mhe-mul", seed=3)
    ids = torch.randint(0, model.config.vocab_size, (2, 9))
    base = _decoder_logits(model, ids)
    attn = model.blocks[1].attn
    with torch.no_grad():
        attn.q_head_embeddings[2] *= 3.7
        attn.k_head_embeddings[2] /= 3.7
    assert (_decoder_logits(model, ids) - base).abs().max() < 1e-4
    with (
        torch.no_grad()
    ):  # scaling only the query side does change the output: the check is not vacuous
        attn.q_head_embeddings[2] *= 3.7
    assert (_decoder_logits(model, ids) - base).abs().max() > 1e-3


@pytest.mark.parametrize("attention", ALL_KINDS)
def test_incremental_decoding_equals_full_pass(attention):
    model = tiny_model(attention=attention, seed=4)
    cfg = model.config
    ids = torch.randint(0, cfg.vocab_size, (3, 11))
    with torch.no_grad():
        full, full_cache = model(ids)
        logits, cache = model(ids[:, :5])  # prefill
        steps = [logits]
        for t in range(5, 11):  # then one token at a time
            logits, cache = model(ids[:, t : t + 1], cache)
            steps.append(logits)
    assert (torch.cat(steps, 1) - full).abs().max() < 1e-5
    for (k, v), (fk, fv) in zip(cache, full_cache):
        assert k.shape == (3, cfg.kv_heads, 11, cfg.head_dim) == v.shape
        assert (k - fk).abs().max() < 1e-5 and (v - fv).abs().max() < 1e-5


@pytest.mark.parametrize("attention", ALL_KINDS)
def test_encoder_padding_does_not_leak_into_real_tokens(attention):
    model = tiny_model(arch="encoder", attention=attention, seed=5)
    ids = torch.randint(0, model.config.vocab_size, (2, 8))
    mask = torch.ones(2, 8, dtype=torch.long)
    mask[1, 5:] = 0
    padded = ids.clone()
    padded[1, 5:] = 0
    with torch.no_grad():
        a = model(ids, mask)
        b = model(padded, mask)
        alone = model(ids[1:, :5])
    assert a.shape == (2, 8, model.config.d_model)
    assert (a[1, :5] - b[1, :5]).abs().max() < 1e-5
    assert (a[1, :5] - alone[0]).abs().max() < 1e-5


def test_mhe_cache_holds_one_head_and_mha_cache_holds_all():
    ids = torch.randint(0, 97, (1, 4))
    for attention, heads in [("mhe-mul", 1), ("mhe-add", 1), ("mha", 4), ("mqa", 1), ("gqa", 2)]:
        _, cache = tiny_model(attention=attention)(ids)
        assert cache[0][0].shape[1] == heads, attention


def test_pair_tied_head_embeddings_repeat_one_value_per_rotation_pair():
    """rope_pair_tied_embeddings: E_Q and E_K are stored (n, d/2) and used on both halves of every rotation
    pair (rotate-half: dim j with j + d/2); E_V stays (n, d); the module is still the per-head definition,
    the training core equals the reference core, and gradients reach the stored halves."""
    from mhe_edge.models.attention import fast_attention, rope_tables, use_attention_core

    model = tiny_model(seed=4, position="rope", rope_pair_tied_embeddings=True)
    attn = model.blocks[0].attn
    n, d = attn.n_heads, attn.head_dim
    assert attn.q_head_embeddings.shape == attn.k_head_embeddings.shape == (n, d // 2)
    assert attn.v_head_embeddings.shape == (n, d)
    e_q, e_k, _ = attn.head_embeddings()
    assert e_q.shape == (n, d) and torch.equal(e_q[:, : d // 2], e_q[:, d // 2 :])
    assert torch.equal(e_k[:, d // 2 :], attn.k_head_embeddings)
    x = torch.randn(2, 7, model.config.d_model)
    rope = rope_tables(torch.arange(7), d, model.config.rope_theta)
    got, _ = attn(x, causal=True, rope=rope)
    with use_attention_core(fast_attention):
        fast, _ = attn(x, causal=True, rope=rope)
    assert (got - fast).abs().max() < 1e-5
    fast.square().sum().backward()
    assert attn.q_head_embeddings.grad is not None and attn.q_head_embeddings.grad.abs().sum() > 0
    assert attn.k_head_embeddings.grad is not None and attn.k_head_embeddings.grad.abs().sum() > 0


@pytest.mark.parametrize(
    "overrides", [dict(position="learned"), dict(position="rope", attention="mhe-add")]
)
def test_pair_tied_head_embeddings_are_refused_where_they_mean_nothing(overrides):
    from mhe_edge.errors import ConfigError

    with pytest.raises(ConfigError, match="needs attention mhe-mul and position rope"):
        tiny_model(rope_pair_tied_embeddings=True, **overrides)
