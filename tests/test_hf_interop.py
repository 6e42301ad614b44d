"""Real models in: folders written by transformers (never downloaded: built here at odd sizes with
`save_pretrained`) export to ONNX equal to transformers within 1e-4, generate the same greedy tokens, and
refuse what mhe-edge does not implement. transformers is used by these tests only."""

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch

transformers = pytest.importorskip("transformers")

from mhe_edge import describe, export, load_model, optimize  # noqa: E402
from mhe_edge.errors import CheckpointError  # noqa: E402
from mhe_edge.sessions import create_session  # noqa: E402

VOCAB = 101
SMALL = dict(vocab_size=VOCAB, bos_token_id=None, eos_token_id=None, pad_token_id=None)


def _llama(**overrides):
    fields = dict(
        hidden_size=48,
        intermediate_size=100,
        num_hidden_layers=2,
        num_attention_heads=6,
        num_key_value_heads=2,
        max_position_embeddings=64,
        **SMALL,
    )
    return transformers.LlamaForCausalLM(transformers.LlamaConfig(**{**fields, **overrides}))


def _qwen2():
    """Head size 16 (what GroupQueryAttention's rotary takes) and Q/K/V biases away from their zero init."""
    model = transformers.Qwen2ForCausalLM(
        transformers.Qwen2Config(
            hidden_size=64,
            intermediate_size=100,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=64,
            **SMALL,
        )
    )
    with torch.no_grad():
        for layer in model.model.layers:
            for proj in (layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj):
                proj.bias.normal_(0, 0.5)
    return model


FAMILIES = {
    "llama-gqa": lambda: _llama(),
    "llama-mqa-tied": lambda: _llama(num_key_value_heads=1, tie_word_embeddings=True),
    "qwen2": lambda: _qwen2(),
    "gpt2": lambda: transformers.GPT2LMHeadModel(
        transformers.GPT2Config(n_embd=48, n_layer=2, n_head=4, n_positions=64, **SMALL)
    ),
}


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """name -> (transformers model, its folder, our ONNX export of the folder)."""
    made = {}
    root = tmp_path_factory.mktemp("hf")
    for name, build in FAMILIES.items():
        torch.manual_seed(len(made))
        model = build().eval()
        model.save_pretrained(root / name)
        export(root / name, root / f"{name}.onnx")
        made[name] = (model, root / name, root / f"{name}.onnx")
    return made


def _logits(session, ids):
    names = [i.name for i in session.get_inputs()]
    feeds = {"input_ids": ids, "attention_mask": np.ones_like(ids)}
    for i in session.get_inputs()[2:]:
        shape = [ids.shape[0]] + [d if isinstance(d, int) else 0 for d in i.shape[1:]]
        feeds[i.name] = np.zeros(shape, np.float32)
    assert names[0] == "input_ids"
    return session.run(["logits"], feeds)[0]


@pytest.mark.parametrize("name", list(FAMILIES))
def test_exported_logits_equal_transformers(folders, name):
    model, folder, onnx_path = folders[name]
    ids = np.random.default_rng(3).integers(0, VOCAB, (2, 9))
    with torch.no_grad():
        want = model(torch.from_numpy(ids)).logits.numpy()
    got = _logits(create_session(onnx_path), ids)
    assert np.abs(got - want).max() <= 1e-4
    assert describe(folder).kind == "folder"


@pytest.mark.parametrize("name", list(FAMILIES))
def test_generate_equals_transformers_greedy(folders, name, cli):
    model, _, onnx_path = folders[name]
    prompt = [5, 17, 3, 42, 8]
    with torch.no_grad():
        hf = model.generate(
            torch.tensor([prompt]), max_new_tokens=10, do_sample=False, pad_token_id=0
        )[0, len(prompt) :].tolist()
    ours = cli(
        "generate",
        onnx_path,
        "--prompt",
        ",".join(map(str, prompt)),
        "--max-new-tokens",
        "10",
        "--json",
    )
    assert ours.code == 0, ours.stderr
    assert json.loads(ours.stdout)["tokens"][0] == hf


@pytest.mark.parametrize("target", ["std", "ort"])
def test_imported_llama_optimizes(folders, tmp_path, target):
    _, _, onnx_path = folders["llama-gqa"]
    report = optimize(onnx_path, tmp_path / "opt.onnx", target=target)
    fused = "com.microsoft.GroupQueryAttention" if target == "ort" else "Attention"
    assert report.max_abs_diff <= 1e-4 and report.op_counts_after.get(fused) == 2


def test_bfloat16_folder_exports_in_float32(tmp_path):
    torch.manual_seed(7)
    model = _llama().to(torch.bfloat16).eval()
    model.save_pretrained(tmp_path / "bf16")
    assert (
        json.loads((tmp_path / "bf16" / "config.json").read_text()).get("dtype", "bfloat16")
        == "bfloat16"
    )
    report = export(tmp_path / "bf16", tmp_path / "bf16.onnx")
    ids = np.random.default_rng(0).integers(0, VOCAB, (1, 6))
    with torch.no_grad():
        want = model.float()(
            torch.from_numpy(ids)
        ).logits.numpy()  # the same bf16 weights, computed in fp32
    assert (
        report.max_abs_diff <= 1e-4
        and np.abs(_logits(create_session(tmp_path / "bf16.onnx"), ids) - want).max() <= 1e-4
    )


def test_bert_encoder_equals_transformers(tmp_path):
    torch.manual_seed(2)
    config = transformers.BertConfig(
        vocab_size=VOCAB,
        hidden_size=48,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=96,
        max_position_embeddings=64,
    )
    model = transformers.BertModel(config).eval()
    model.save_pretrained(tmp_path / "bert")
    export(tmp_path / "bert", tmp_path / "bert.onnx")
    ids = np.random.default_rng(1).integers(0, VOCAB, (2, 7))
    mask = np.ones_like(ids)
    mask[1, 5:] = 0
    with torch.no_grad():
        want = model(
            torch.from_numpy(ids), attention_mask=torch.from_numpy(mask)
        ).last_hidden_state.numpy()
    got = create_session(tmp_path / "bert.onnx").run(
        None, {"input_ids": ids, "attention_mask": mask}
    )[0]
    assert (
        np.abs(got - want)[mask.astype(bool)].max() <= 1e-4
    )  # padded rows' outputs are unspecified


def test_sharded_folder_loads(tmp_path):
    torch.manual_seed(4)
    model = _llama().eval()
    model.save_pretrained(tmp_path / "sharded", max_shard_size="40KB")
    assert (tmp_path / "sharded" / "model.safetensors.index.json").is_file()
    ids = torch.randint(0, VOCAB, (1, 5))
    with torch.no_grad():
        assert torch.allclose(
            load_model(tmp_path / "sharded")(ids)[0], model(ids).logits, atol=1e-5
        )


def _edit_config(folder, **changes):
    path = folder / "config.json"
    config = {**json.loads(path.read_text()), **changes}
    path.write_text(json.dumps(config))


@pytest.mark.parametrize(
    "changes,fragment",
    [
        (dict(model_type="t5"), "model_type 't5' is not supported"),
        (dict(rope_scaling={"rope_type": "linear", "factor": 2.0}), "rope_scaling"),
        (
            dict(rope_parameters={"rope_type": "yarn", "rope_theta": 10000.0, "factor": 4.0}),
            "rope_scaling",
        ),
        (dict(hidden_act="gelu"), "hidden_act='gelu'"),
        (dict(model_type="mistral", sliding_window=16), "sliding_window=16"),
        (dict(num_hidden_layers=3), "lacks"),
    ],
)
def test_unsupported_configs_are_refused_by_name(tmp_path, cli, changes, fragment):
    _llama().save_pretrained(tmp_path / "m")
    _edit_config(tmp_path / "m", **changes)
    result = cli("export", tmp_path / "m", "-o", tmp_path / "m.onnx")
    assert result.code == 3 and fragment in result.stderr and "Traceback" not in result.stderr, (
        result.stderr
    )
    assert not (tmp_path / "m.onnx").exists()


def test_unexpected_tensors_are_named(tmp_path):
    from safetensors.torch import load_file, save_file

    _llama().save_pretrained(tmp_path / "m")
    state = load_file(tmp_path / "m" / "model.safetensors")
    save_file(
        {**state, "model.layers.0.self_attn.rotary.inv_freq": torch.ones(4)},
        tmp_path / "m" / "model.safetensors",
    )
    with pytest.raises(CheckpointError, match="rotary.inv_freq"):
        load_model(tmp_path / "m")


def test_compare_takes_folders_ours_and_imported(folders, tmp_path):
    from mhe_edge import compare, init_model

    ours = init_model(tmp_path / "mhe", attention="mhe-mul", preset="tiny-llama", vocab_size=VOCAB)
    _, imported, _ = folders["llama-gqa"]
    rows = compare([imported, ours.path], seq_lens=[8], runs=1, new_tokens=2).rows
    assert [(r["model"], r["attention"]) for r in rows] == [
        ("llama-gqa", "gqa"),
        ("mhe", "mhe-mul"),
    ]
    assert all(r["decode_ms_per_token"] > 0 and r["peak_memory_bytes"] > 0 for r in rows)


def test_imported_llama_profiles_converts_and_packages(folders, tmp_path):
    from mhe_edge import package, profile, to_ort

    _, _, onnx_path = folders["llama-mqa-tied"]
    std = optimize(onnx_path, tmp_path / "std.onnx", target="std").output
    assert to_ort(std, tmp_path / "llama.ort").max_abs_diff <= 1e-5
    assert (
        profile(std, seq_len=8, new_tokens=2, runs=1, warmup=0).latency_ms["decode_per_token"]["n"]
        == 2
    )
    packaged = package(onnx_path, tmp_path / "genai", share_buffer=True)
    assert packaged.target == "ort" and packaged.check["status"] == "passed"


def test_a_hub_cache_snapshot_of_links_exports(tmp_path, cli):
    """~/.cache/huggingface/hub/models--ORG--NAME/snapshots/REV/ holds relative links into ../../blobs/:
    read through them as transformers does (writing still never follows a link)."""
    import hashlib
    import os

    from mhe_edge import init_model

    made = Path(init_model(tmp_path / "made", preset="tiny-llama").path)
    repo = tmp_path / "hub" / "models--org--tiny"
    blobs, snapshot = repo / "blobs", repo / "snapshots" / "0123abcd"
    blobs.mkdir(parents=True)
    snapshot.mkdir(parents=True)
    for file in made.iterdir():
        data = file.read_bytes()
        blob = blobs / hashlib.sha256(data).hexdigest()
        blob.write_bytes(data)
        os.symlink(os.path.relpath(blob, snapshot), snapshot / file.name)
    result = cli("export", snapshot, "-o", tmp_path / "cached.onnx")
    assert result.code == 0, result.stderr
    assert all(p.is_symlink() for p in snapshot.iterdir())  # the snapshot is left as it was


@pytest.mark.parametrize(
    "name,shape",
    [
        ("transformer.h.0.attn.c_attn.weight", (48, 145)),  # an extra column
        ("transformer.h.0.mlp.c_fc.bias", (1,)),  # would broadcast
    ],
)
def test_a_gpt2_tensor_that_does_not_fit_its_config_is_refused(tmp_path, name, shape):
    """transformers refuses these; so does the import, from the header, before a tensor is read."""
    from safetensors.torch import load_file, save_file

    FAMILIES["gpt2"]().save_pretrained(tmp_path / "m")
    state = load_file(tmp_path / "m" / "model.safetensors")
    save_file({**state, name: torch.zeros(shape)}, tmp_path / "m" / "model.safetensors")
    with pytest.raises(CheckpointError, match=re.escape(f"{name} has shape {shape}")):
        load_model(tmp_path / "m")


def _right_padded_then_decoding(runner) -> np.ndarray:
    """The last logits of three decode steps after a right-padded prompt, the mask growing at the end."""
    ids = np.array([[5, 6, 7, 8, 9, 10], [11, 12, 13, 0, 0, 0]])
    mask = np.array([[1] * 6, [1, 1, 1, 0, 0, 0]])
    logits, cache = runner.step(ids, runner.empty_cache(2), mask)
    steps = []
    for t in range(3):
        mask = np.concatenate([mask, np.ones((2, 1), np.int64)], axis=1)
        logits, cache = runner.step(np.array([[3 + t], [4 + t]]), cache, mask)
        steps.append(logits[:, -1])
    return np.stack(steps)


def test_qwen2_folder_optimizes_fused_and_keeps_its_tokens(folders, tmp_path):
    """--target ort packs Q/K/V (with their biases) into one MatMul and rotates inside GroupQueryAttention:
    the layer is 13 nodes (its bias Add included), not 34. The tokens stay the export's,
    right-padded and (after the any-padding rewrite, which turns rotary back out onto the export's
    positions) left-padded too."""
    import onnx_ir as ir
    from passes_helpers import op_counts
    from test_padding import alone_and_left_padded

    from mhe_edge.edge.padding import take_any_padding
    from mhe_edge.files import save_ir_model
    from mhe_edge.runtime import ExportedModel

    _, _, onnx_path = folders["qwen2"]
    report = optimize(onnx_path, tmp_path / "ort.onnx", target="ort")
    counts = report.op_counts_after
    assert counts["MatMul"] == 2 * 5 + 1  # qkv, out, gate, up, down; the head
    assert not counts.get("Cos") and not counts.get("Neg")
    graph = ir.load(report.output).graph
    assert len(graph) <= 2 * 13 + 16, len(graph)
    rows = [[5, 6, 7, 8, 9, 10], [11, 12, 13]]
    want = ExportedModel(onnx_path).generate_rows(rows, 8, stop_at_eos=False)
    assert ExportedModel(report.output).generate_rows(rows, 8, stop_at_eos=False) == want
    model = ir.load(report.output)
    assert take_any_padding(model)
    assert op_counts(model)["com.microsoft.RotaryEmbedding"] == 4
    padded = tmp_path / "any.onnx"
    save_ir_model(model, padded)
    alone, batch = alone_and_left_padded(padded)
    assert batch == alone
    # a right-padded row that goes on decoding: its cache slots run ahead of its positions (1e-2 off if
    # the kernel rotated by slot)
    got, reference = (_right_padded_then_decoding(ExportedModel(p)) for p in (padded, onnx_path))
    assert np.abs(got - reference).max() <= 1e-4

    int4 = optimize(onnx_path, tmp_path / "int4.onnx", target="ort", int4=True).op_counts_after
    assert int4["com.microsoft.MatMulNBits"] == 2 * 5 + 1 and not int4.get("MatMul")
