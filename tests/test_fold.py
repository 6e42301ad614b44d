"""`mhe-edge fold`: an MHE model as a transformers checkpoint with one KV head, loaded and run by
transformers itself (AutoModelForCausalLM, AutoTokenizer) token-equal to the MHE model; what no family
represents exactly is refused in one line with nothing written. Real transformers, tiny seeded models."""

import json

import pytest
import torch
from conftest import tiny_model
from transformers import AutoModelForCausalLM, AutoTokenizer

from mhe_edge.models.folder import save_folder
from mhe_edge.text.tokenizer import byte_tokenizer
from mhe_edge.workflows.fold import FoldRefused, fold

LLAMA_SHAPE = dict(position="rope", norm="rmsnorm", mlp="swiglu", d_model=64, max_seq_len=64)


def mhe(attention="mhe-mul", pair_constant=False, **overrides):
    """A tiny decoder with head embeddings and biases far from their init (a fold that dropped one fails)."""
    model = tiny_model(attention=attention, seed=3, vocab_size=300, eos_token_id=0, **overrides)
    with torch.no_grad():
        for block in model.blocks:
            if model.config.is_mhe:
                for e in block.attn.head_embeddings():
                    e.add_(0.5 * torch.randn_like(e))
                    if pair_constant:  # equal on both halves of every rotation pair
                        half = e.shape[1] // 2
                        e[:, half:] = e[:, :half]
        for p in model.parameters():
            if p.dim() == 1:
                p.add_(0.2 * torch.randn_like(p))
    return model


def folder_with_tokenizer(tmp_path, model):
    folder = save_folder(model, tmp_path / "model")
    byte_tokenizer().save(folder)
    return folder


def test_learned_mhe_mul_folds_to_gpt_bigcode_that_transformers_runs(tmp_path, cli):
    model = mhe("mhe-mul")
    result = cli("fold", folder_with_tokenizer(tmp_path, model), "-o", tmp_path / "mqa", "--json")
    assert result.code == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["model_type"] == "gpt_bigcode" and report["num_key_value_heads"] == 1
    assert report["float64_max_abs_diff"] < 1e-12 and report["float32_max_abs_diff"] < 1e-4
    assert report["reread_max_abs_diff"] < 1e-4  # mhe-edge reads it back as gpt_bigcode (MQA)
    folder = tmp_path / "mqa"
    config = json.loads((folder / "config.json").read_text())
    assert config["multi_query"] is True and config["max_position_embeddings"] == 64
    tokenizer_config = json.loads((folder / "tokenizer_config.json").read_text())
    assert tokenizer_config["model_input_names"] == ["input_ids", "attention_mask"]
    assert json.loads((folder / "generation_config.json").read_text())["eos_token_id"] == 0

    hf = AutoModelForCausalLM.from_pretrained(
        folder
    ).eval()  # the default attention, not the check's
    tokenizer = AutoTokenizer.from_pretrained(folder)
    ids = torch.tensor([tokenizer("def fold(x):")["input_ids"]])
    assert ids[0].tolist() == byte_tokenizer().encode("def fold(x):")
    with torch.no_grad():
        want = model.generate(ids, 10)[0].tolist()
        got = hf.generate(ids, max_new_tokens=10, do_sample=False, pad_token_id=0)[
            0, ids.shape[1] :
        ]
    got = got.tolist()
    assert got[: len(want)] == want
    assert (
        hf.transformer.h[0].attn.c_attn.weight.shape[0] == 48 + 2 * 12
    )  # n*d queries, one K, one V


def test_learned_mhe_add_folds_its_value_embedding_into_the_bias(tmp_path):
    report = fold(save_folder(mhe("mhe-add", out_bias=False), tmp_path / "m"), tmp_path / "o")
    assert report.model_type == "gpt_bigcode" and report.float64_max_abs_diff < 1e-12


def test_rope_mhe_mul_constant_within_pairs_folds_to_llama_with_one_kv_head(tmp_path):
    model = mhe("mhe-mul", pair_constant=True, qkv_bias=False, **LLAMA_SHAPE)
    report = fold(save_folder(model, tmp_path / "m"), tmp_path / "o")
    assert report.model_type == "llama" and report.float64_max_abs_diff < 1e-12
    config = json.loads((tmp_path / "o" / "config.json").read_text())
    assert config["num_key_value_heads"] == 1 and config["num_attention_heads"] == 4


@pytest.mark.parametrize(
    "attention, why",
    [
        ("mhe-mul", "train it with --rope-pair-tied-embeddings to keep it foldable"),
        ("mhe-add", "MHE-ADD with RoPE has no standard family"),
    ],
)
def test_what_no_family_represents_is_refused_with_nothing_written(tmp_path, cli, attention, why):
    model = mhe(attention, **LLAMA_SHAPE)  # MUL at its default spread: unequal within pairs
    result = cli("fold", save_folder(model, tmp_path / "m"), "-o", tmp_path / "out")
    assert result.code == FoldRefused.exit_code and why in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]


def test_trained_pair_tied_rope_mhe_mul_folds_and_transformers_generates_its_tokens(tmp_path):
    """A RoPE MHE-MUL trained a few steps with --rope-pair-tied-embeddings (training moves every head
    embedding) folds exactly, and AutoModelForCausalLM greedy-decodes mhe-edge's tokens."""
    import pydoc_data.topics

    from mhe_edge.models.checkpoint import load_model
    from mhe_edge.training.workflow import train

    topics = pydoc_data.topics.topics
    text = tmp_path / "docs.txt"
    text.write_text("".join(topics[k] for k in sorted(topics))[:12_000])
    shape = dict(LLAMA_SHAPE, n_layers=1, d_model=32, n_heads=4, d_ff=64, max_seq_len=32)
    options = dict(steps=4, batch=2, seq_len=16, eval_every=1000, lr=1e-2)
    run = tmp_path / "run"
    train(run, [text], tokenizer="bytes", options=options, rope_pair_tied_embeddings=True, **shape)
    trained = load_model(run)
    e_q = trained.blocks[0].attn.q_head_embeddings
    # one value per rotation pair, but different values across the pairs: the tie is what makes it exact
    assert e_q.shape == (4, 4) and e_q.std(dim=1).min() > 0.05
    report = fold(run, tmp_path / "llama")
    assert report.model_type == "llama" and report.float64_max_abs_diff < 1e-12
    hf = AutoModelForCausalLM.from_pretrained(tmp_path / "llama").eval()
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "llama")
    ids = torch.tensor([tokenizer("The with statement")["input_ids"]])
    with torch.no_grad():
        want = trained.generate(ids, 8)[0].tolist()
        got = hf.generate(ids, max_new_tokens=8, do_sample=False, pad_token_id=0)[0, ids.shape[1] :]
    assert got.tolist()[: len(want)] == want and len(want) > 0


def test_transformers_gpt_bigcode_folders_read_as_multi_query(tmp_path):
    from transformers import GPTBigCodeConfig, GPTBigCodeForCausalLM

    from mhe_edge.errors import CheckpointError
    from mhe_edge.models.checkpoint import load_model

    torch.manual_seed(0)
    hf = GPTBigCodeForCausalLM(
        GPTBigCodeConfig(
            n_embd=32, n_layer=2, n_head=4, n_inner=64, n_positions=32, vocab_size=50,
            multi_query=True, activation_function="gelu_pytorch_tanh", tie_word_embeddings=False,
        )
    ).eval()  # fmt: skip
    hf.save_pretrained(tmp_path / "bigcode")
    ours = load_model(tmp_path / "bigcode")
    assert ours.config.attention == "mqa" and ours.config.kv_heads == 1
    ids = torch.randint(0, 50, (2, 12))
    with torch.no_grad():
        assert (ours(ids).logits - hf(ids).logits).abs().max() < 1e-5
    config = json.loads((tmp_path / "bigcode" / "config.json").read_text())
    (tmp_path / "bigcode" / "config.json").write_text(json.dumps({**config, "multi_query": False}))
    with pytest.raises(CheckpointError, match="multi_query=False is not supported"):
        load_model(tmp_path / "bigcode")
