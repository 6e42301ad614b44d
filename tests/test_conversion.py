"""convert: pretrained MHA/GQA -> MHE. The fit is exact where MHE can express the source (an MHA model built
from an MHE one converts back to it), `svd` fits no worse than `mean` on every layer, a transformers-written
Llama (GQA) folder converts to folders that export, optimize for ONNX Runtime and generate, and what cannot be
converted is refused before any output."""

import json

import onnx
import pytest
import torch
from conftest import tiny_config

from mhe_edge import convert
from mhe_edge.config import ModelConfig
from mhe_edge.errors import CheckpointError
from mhe_edge.models import build_model, load_model, save_checkpoint

transformers = pytest.importorskip("transformers")


def _mha_twin(mhe) -> torch.nn.Module:
    """An MHA model whose head i projects exactly as the MHE model's head i does (MUL: rows scaled by E[i];
    ADD: the shared matrix, biased by b + E[i]); everything else shared."""
    config = ModelConfig(**{**mhe.config.to_dict(), "attention": "mha", "n_kv_heads": None})
    twin = build_model(config)
    state = dict(mhe.state_dict())
    for i, block in enumerate(mhe.blocks):
        prefix = f"blocks.{i}.attn."
        for name, table in zip("qkv", block.attn.head_embeddings()):
            weight = state.pop(f"{prefix}{name}_proj.weight")  # (d, D)
            bias = state.pop(f"{prefix}{name}_proj.bias", None)
            state.pop(f"{prefix}{name}_head_embeddings")
            if mhe.config.attention == "mhe-mul":
                state[f"{prefix}{name}_proj.weight"] = (table[:, :, None] * weight).reshape(
                    -1, weight.shape[1]
                )
                if bias is not None:
                    state[f"{prefix}{name}_proj.bias"] = (table * bias).reshape(-1)
            else:
                state[f"{prefix}{name}_proj.weight"] = weight.repeat(table.shape[0], 1)
                state[f"{prefix}{name}_proj.bias"] = (bias + table).reshape(-1)
    twin.load_state_dict(state)
    return twin.eval()


@pytest.mark.parametrize(
    "attention, position",
    [("mhe-mul", "rope"), ("mhe-mul", "learned"), ("mhe-add", "learned")],
)
def test_svd_recovers_an_mhe_model_exactly(tmp_path, attention, position):
    mhe = build_model(tiny_config(attention=attention, position=position), seed=4)
    if (
        attention == "mhe-mul" and position == "rope"
    ):  # MHE-MUL with RoPE folds when a rotation pair shares one scale
        with torch.no_grad():
            for block in mhe.blocks:
                for table in block.attn.head_embeddings():
                    half = table.shape[1] // 2
                    table[:, half:] = table[:, :half]
    if attention == "mhe-add":  # ADD's embeddings live in biases; make them large enough to matter
        with torch.no_grad():
            for block in mhe.blocks:
                for table in block.attn.head_embeddings():
                    table.normal_(0.0, 1.0)
    source = save_checkpoint(_mha_twin(mhe), tmp_path / "mha.safetensors")
    ids = torch.randint(
        0, mhe.config.vocab_size, (2, 12), generator=torch.Generator().manual_seed(0)
    )
    with torch.no_grad():
        want = mhe(ids).logits
    differences = {}
    for init in ("svd", "mean"):
        report = convert(source, tmp_path / init, attention=attention, init=init)
        with torch.no_grad():
            differences[init] = float((load_model(tmp_path / init)(ids).logits - want).abs().max())
        if init == "svd":
            assert max(max(layer.error.values()) for layer in report.layers) < 1e-6
    assert differences["svd"] < 1e-4 and differences["mean"] > 1e-2, differences


@pytest.fixture(scope="module")
def llama_gqa(tmp_path_factory):
    """A transformers Llama with grouped KV heads, at sizes no other test uses (head size 8, for ORT's GQA)."""
    torch.manual_seed(11)
    config = transformers.LlamaConfig(
        hidden_size=32,
        intermediate_size=56,
        num_hidden_layers=3,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=40,
        vocab_size=73,
        bos_token_id=None,
        eos_token_id=None,
        pad_token_id=None,
    )
    folder = tmp_path_factory.mktemp("gqa") / "llama-gqa"
    transformers.LlamaForCausalLM(config).eval().save_pretrained(folder)
    return folder


@pytest.mark.parametrize("attention", ["mhe-mul", "mhe-add"])
def test_llama_gqa_folder_converts_exports_and_generates(llama_gqa, tmp_path, cli, attention):
    fits = {}
    for init in ("mean", "svd"):
        done = cli(
            "convert",
            llama_gqa,
            "-o",
            tmp_path / init,
            "--attention",
            attention,
            "--init",
            init,
            "--json",
        )
        assert done.code == 0, done.stderr
        fits[init] = json.loads(done.stdout)
    svd, mean = fits["svd"], fits["mean"]
    assert svd["config"]["attention"] == attention and svd["source_attention"] == "gqa"
    assert [layer["layer"] for layer in svd["layers"]] == [0, 1, 2]
    for fitted, pooled in zip(svd["layers"], mean["layers"]):
        for projection in "qkv":
            assert fitted["error"][projection] <= pooled["error"][projection] + 1e-9
            assert fitted["mean_error"][projection] == pytest.approx(pooled["error"][projection])
    if attention == "mhe-mul":  # a rank-1 fit across heads is strictly better on random weights
        assert all(f["error"]["q"] < p["error"]["q"] for f, p in zip(svd["layers"], mean["layers"]))
    assert (
        svd["kv_cache_bytes_per_token"]["converted"] * 2
        == svd["kv_cache_bytes_per_token"]["source"]
    )

    exported = cli(
        "export",
        tmp_path / "svd",
        "-o",
        tmp_path / "m.onnx",
        "--optimize",
        "--target",
        "ort",
        "--json",
    )
    assert exported.code == 0, exported.stderr
    report = json.loads(exported.stdout)
    assert report["max_abs_diff"] <= 1e-4 and report["optimized"]["max_abs_diff"] <= 1e-4
    optimized = onnx.load(tmp_path / "m.opt.onnx", load_external_data=False)
    kv_heads = [
        i.type.tensor_type.shape.dim[1].dim_value for i in optimized.graph.input if "past" in i.name
    ]
    assert kv_heads and set(kv_heads) == {1}  # folded: one KV head per layer
    assert report["optimized"]["op_counts"]["after"].get("com.microsoft.GroupQueryAttention") == 3

    generated = cli(
        "generate", tmp_path / "m.opt.onnx", "--prompt", "5,17,3", "--max-new-tokens", "6", "--json"
    )
    assert generated.code == 0, generated.stderr
    model = load_model(tmp_path / "svd")
    want = model.generate(torch.tensor([[5, 17, 3]]), 6)[0].tolist()
    assert json.loads(generated.stdout)["tokens"][0] == want


def test_refusals_come_before_any_output(tmp_path, cli, llama_gqa):
    mhe = save_checkpoint(
        build_model(tiny_config(attention="mhe-mul"), seed=0), tmp_path / "mhe.pt"
    )
    single = save_checkpoint(
        build_model(tiny_config(attention="mha", n_heads=1), seed=0), tmp_path / "one.pt"
    )
    unknown = tmp_path / "falcon"
    unknown.mkdir()
    (unknown / "config.json").write_text(json.dumps({"model_type": "falcon"}))
    cases = {
        mhe: ("already mhe-mul", 3),
        single: ("one attention head", 3),
        unknown: ("model_type 'falcon' is not supported", 3),
    }
    for source, (message, code) in cases.items():
        done = cli("convert", source, "-o", tmp_path / "out", "--attention", "mhe-add")
        assert done.code == code and message in done.stderr, done.stderr
        assert len(done.stderr.strip().splitlines()) == 1
        assert not (tmp_path / "out").exists()
    done = cli("convert", llama_gqa, "-o", tmp_path / "out", "--init", "best")
    assert done.code == 2 and "--init must be one of svd, mean" in done.stderr, done.stderr
    with pytest.raises(CheckpointError, match="already MQA"):
        mqa = save_checkpoint(
            build_model(tiny_config(attention="mqa"), seed=0), tmp_path / "mqa.pt"
        )
        convert(mqa, tmp_path / "out", attention="mqa")
    assert not (tmp_path / "out").exists()


@pytest.fixture(scope="module")
def trained_mha(tmp_path_factory):
    """A small MHA decoder trained here on 60 KB of Python's documentation text (bytes: no tokenizer to learn;
    its held-out split, 3 KB, keeps every scoring pass short)."""
    import pydoc_data.topics

    from mhe_edge import TrainOptions, train

    root = tmp_path_factory.mktemp("teacher")
    topics = pydoc_data.topics.topics
    (root / "docs.txt").write_text("".join(topics[k] for k in sorted(topics))[:60_000])
    options = TrainOptions(steps=30, batch=8, seq_len=32, eval_every=1000, checkpoint_every=1000)
    train(
        root / "mha",
        [root / "docs.txt"],
        attention="mha",
        tokenizer="bytes",
        options=options,
        n_layers=1,
        d_model=32,
        d_ff=64,
    )
    return root / "mha"


def test_held_out_bits_per_byte_before_training(trained_mha, tmp_path, cli):
    text = [trained_mha.parent / "docs.txt"]  # recorded by name and sha256: given again
    report = convert(trained_mha, tmp_path / "mhe", attention="mhe-mul", init="svd", text=text)
    held = report.held_out
    assert report.held_out_note == "held-out split of docs.txt"
    assert held["bigram_bits_per_byte"] > 0 and held["bits_per_byte"] > 0
    scored = cli(
        "eval", trained_mha, tmp_path / "mhe", "--window", "128", "--text", text[0], "--json"
    )  # the converter's window
    assert scored.code == 0, scored.stderr
    source_row, converted_row = json.loads(scored.stdout)["rows"]
    assert source_row["bits_per_byte"] == pytest.approx(held["source_bits_per_byte"], abs=1e-9)
    assert converted_row["bits_per_byte"] == pytest.approx(held["bits_per_byte"], abs=1e-9)


def test_uptraining_freezes_then_trains_everything_and_loss_falls(trained_mha, tmp_path, cli):
    from mhe_edge.training.uptraining import CONVERTED

    convert(trained_mha, tmp_path / "mhe", attention="mhe-mul", init="mean")
    start = load_model(tmp_path / "mhe").state_dict()
    text = trained_mha.parent / "docs.txt"
    common = [text, "--init-from", tmp_path / "mhe", "--batch", "8", "--seq-len", "32", "--json"]
    frozen = cli("train", "-o", tmp_path / "frozen", "--steps", "3", "--freeze-steps", "3", *common)
    assert frozen.code == 0, frozen.stderr
    after = load_model(tmp_path / "frozen").state_dict()
    moved = {k for k in start if not torch.equal(start[k], after[k])}
    assert moved and all(CONVERTED.match(k) for k in moved)  # only the converted attention moved
    assert any(k.endswith("head_embeddings") for k in moved)

    args = ["--steps", "25", "--freeze-steps", "5", "--teacher", trained_mha, "--lr", "3e-3"]
    uptrained = cli("train", "-o", tmp_path / "up", *args, *common)
    assert uptrained.code == 0, uptrained.stderr
    report = json.loads(uptrained.stdout)
    before = convert(
        trained_mha, tmp_path / "again", attention="mhe-mul", init="mean", text=[text]
    ).held_out
    assert report["held_out"]["bits_per_byte"] < before["bits_per_byte"] - 0.05
    record = json.loads((tmp_path / "up" / "training.json").read_text())
    assert record["init_from"] == "mhe" and not record["teacher"].startswith("/")
    after = load_model(tmp_path / "up").state_dict()
    assert not torch.equal(start["blocks.0.mlp.fc_in.weight"], after["blocks.0.mlp.fc_in.weight"])

    resumed = cli(
        "train", text, "-o", tmp_path / "up", "--resume", "--steps", "27", "--json"
    )  # teacher re-read
    assert resumed.code == 0, resumed.stderr
    assert json.loads(resumed.stdout)["steps"] == 27
    same = cli(
        "train", text, "-o", tmp_path / "up", "--resume", "--teacher", trained_mha, "--steps", "27"
    )
    assert same.code == 0, same.stderr  # the recorded teacher, named again: accepted
    other = tmp_path / "frozen"  # a decoder over the same vocabulary, but another model
    for flags, named in (
        (["--teacher", other], "--teacher"),
        (["--init-from", other], "--init-from"),
        (["--distill-weight", "0.9"], "--distill-weight (recorded: 0.5)"),
        (["--freeze-steps", "2"], "--freeze-steps (recorded: 5)"),
    ):
        changed = cli("train", text, "-o", tmp_path / "up", "--resume", "--steps", "28", *flags)
        assert changed.code == 2 and named in changed.stderr, changed.stderr
        assert "not as the recorded run" in changed.stderr
    assert json.loads((tmp_path / "up" / "training.json").read_text())["results"]["steps"] == 27
    never = cli("train", text, "-o", tmp_path / "frozen", "--resume", "--teacher", trained_mha)
    assert never.code == 2 and "--teacher" in never.stderr, never.stderr  # it had none
    for flags in (["--attention", "mha"], ["--tokenizer", "bytes"], ["--vocab-size", "300"]):
        beside = cli("train", "-o", tmp_path / "bad", "--init-from", tmp_path / "mhe", *flags)
        assert beside.code == 2 and flags[0] in beside.stderr, beside.stderr
    alone = cli(
        "train", "-o", tmp_path / "bad", "--init-from", tmp_path / "mhe", "--distill-weight", "1"
    )
    assert alone.code == 2 and "give --teacher" in alone.stderr, alone.stderr  # no teacher: no KL
    assert not (tmp_path / "bad").exists()
    record_path = tmp_path / "up" / "training.json"
    record = json.loads(record_path.read_text())
    for key, value, message in (
        ("teacher_sha256", "0" * 64, "changed since the run started"),
        ("teacher", "../nowhere", "is gone: give it with --teacher"),
    ):  # the recorded teacher is read again and must be the one the run was trained with
        record_path.write_text(json.dumps({**record, key: value}))
        moved = cli("train", text, "-o", tmp_path / "up", "--resume", "--steps", "28")
        assert moved.code == 2 and message in moved.stderr, moved.stderr

    refused = cli("train", "-o", tmp_path / "bad", "--init-from", tmp_path / "mhe", "--layers", "3")
    assert refused.code == 2 and "--init-from takes the model's shape" in refused.stderr


def test_streamed_output_is_sharded_in_the_source_precision(llama_gqa, tmp_path, monkeypatch):
    from safetensors import safe_open

    import mhe_edge.workflows.convert as conversion

    bf16 = tmp_path / "bf16"
    transformers.LlamaForCausalLM.from_pretrained(llama_gqa).to(torch.bfloat16).save_pretrained(
        bf16
    )
    whole = convert(bf16, tmp_path / "whole", attention="mhe-mul")
    monkeypatch.setattr(conversion, "MIN_SHARD_BYTES", 4096)  # this model is ~50 KB: many shards
    sharded = convert(bf16, tmp_path / "sharded", attention="mhe-mul")
    shards = [f for f in sharded.files if f.startswith("model-")]
    assert whole.files.count("model.safetensors") == 1 and len(shards) > 3
    assert "model.safetensors.index.json" in sharded.files
    with safe_open(str(tmp_path / "sharded" / shards[0]), framework="pt") as f:
        assert {f.get_slice(k).get_dtype() for k in f.keys()} == {"BF16"}
    ids = torch.tensor([[3, 9, 27, 1]])
    with torch.no_grad():
        a = load_model(tmp_path / "whole")(ids).logits
        b = load_model(tmp_path / "sharded")(ids).logits
    assert torch.equal(a, b) and whole.layers == sharded.layers


def test_gpt2_biases_fit_mhe_add_and_bert_converts(tmp_path):
    torch.manual_seed(5)
    gpt2 = transformers.GPT2LMHeadModel(
        transformers.GPT2Config(n_embd=24, n_layer=1, n_head=3, n_positions=20, vocab_size=61)
    ).eval()
    with torch.no_grad():
        gpt2.transformer.h[0].attn.c_attn.bias.normal_(0.0, 1.0)  # transformers starts biases at 0
    gpt2.save_pretrained(tmp_path / "gpt2")
    fits = {
        init: convert(tmp_path / "gpt2", tmp_path / f"gpt2-{init}", attention="mhe-add", init=init)
        for init in ("svd", "mean")
    }
    (svd,), (mean,) = fits["svd"].layers, fits["mean"].layers
    assert all(svd.error[p] < mean.error[p] for p in "qkv")  # the heads' biases become embeddings
    assert load_model(tmp_path / "gpt2-svd").config.qkv_bias

    bert = transformers.BertModel(
        transformers.BertConfig(
            hidden_size=24,
            num_hidden_layers=1,
            num_attention_heads=3,
            intermediate_size=40,
            vocab_size=61,
            max_position_embeddings=20,
        )  # fmt: skip
    )
    bert.save_pretrained(tmp_path / "bert")
    report = convert(tmp_path / "bert", tmp_path / "bert-mhe", attention="mhe-mul")
    model = load_model(tmp_path / "bert-mhe")
    assert model.config.arch == "encoder" and report.layers[0].error["q"] < 1
    assert model(torch.tensor([[1, 2, 3]])).shape == (1, 3, 24)
