"""Left padding (what transformers.js and Optimum send): a left-padded batch of two prompts gives each row
the tokens that prompt gets alone, on every target, or the file is refused in one line; the runtime stops
at the position table's end. Real exports on ONNX Runtime; the pass also on a hand-built graph."""

import numpy as np
import onnx_ir as ir
import onnxruntime as ort
import pytest
from passes_helpers import exported

from mhe_edge.contract import KEY_MIN_ORT, KEY_PADDING
from mhe_edge.edge.padding import take_any_padding, takes_left_padding
from mhe_edge.errors import RequestError
from mhe_edge.files import save_ir_model
from mhe_edge.passes import optimize
from mhe_edge.passes._graph import GraphRefused
from mhe_edge.passes.seqlens_from_mask import AnyPaddingFromAttentionMaskPass
from mhe_edge.runtime import ExportedModel

LONG, SHORT = [5, 6, 7, 8, 9, 10], [11, 12, 13]


def greedy(runner: ExportedModel, ids, mask, new_tokens=6, capacity=None):
    """Greedy ids with the mask extended by one 1 per step (as transformers.js and Optimum do)."""
    ids, mask = np.array(ids, np.int64), np.array(mask, np.int64)
    logits, cache = runner.step(ids, runner.empty_cache(len(ids), capacity), mask)
    out = []
    for _ in range(new_tokens):
        token = logits[:, -1].argmax(-1)
        out.append(token)
        mask = np.concatenate([mask, np.ones((len(ids), 1), np.int64)], axis=1)
        logits, cache = runner.step(token[:, None], cache, mask)
    return np.stack(out, 1).tolist()


def alone_and_left_padded(path, capacity=None):
    runner = ExportedModel(path)
    alone = [greedy(runner, [p], [[1] * len(p)], capacity=capacity)[0] for p in (LONG, SHORT)]
    pad = len(LONG) - len(SHORT)
    batch = greedy(
        runner,
        [LONG, [0] * pad + SHORT],
        [[1] * len(LONG), [0] * pad + [1] * len(SHORT)],
        capacity=capacity,
    )
    return alone, batch


@pytest.fixture(params=["learned", "rope"])
def export_path(request, tmp_path):
    return exported(tmp_path, attention="mhe-mul", d_model=64, position=request.param)[1]


@pytest.mark.parametrize("target", [None, "std", "portable"])
def test_left_padded_batch_equals_each_prompt_alone(tmp_path, export_path, target):
    path = (
        export_path
        if target is None
        else optimize(export_path, tmp_path / "o.onnx", target=target).output
    )
    alone, batch = alone_and_left_padded(path)
    assert batch == alone


def test_ort_target_refuses_left_padding_and_the_rewrite_takes_it(tmp_path, export_path):
    path = optimize(export_path, tmp_path / "ort.onnx", target="ort").output
    with pytest.raises(RequestError, match="takes right padding only"):
        alone_and_left_padded(path)
    model = ir.load(path)
    assert take_any_padding(model) and not take_any_padding(model)  # once only
    assert (
        model.metadata_props[KEY_PADDING] == "any" and model.metadata_props[KEY_MIN_ORT] == "1.22"
    )
    assert takes_left_padding(model.metadata_props)
    fixed = tmp_path / "any.onnx"
    save_ir_model(model, fixed)
    alone, batch = alone_and_left_padded(fixed)
    assert batch == alone
    alone, batch = alone_and_left_padded(
        fixed, capacity=len(LONG) + 7
    )  # the cache updated in place
    assert batch == alone
    runner = ExportedModel(fixed)  # right padding, as mhe-edge generate pads, still right
    assert runner.generate_rows([LONG, SHORT], 6, stop_at_eos=False) == alone


def test_runtime_stops_at_the_position_table(tmp_path, export_path):
    runner = ExportedModel(export_path)
    limit = runner.config.max_seq_len
    cache = runner.empty_cache(1)
    _, cache = runner.step(np.zeros((1, limit), np.int64), cache)
    with pytest.raises(RequestError, match=f"max_position_embeddings {limit}"):
        runner.step(np.zeros((1, 1), np.int64), cache)


def hand_built_gqa(heads=2, head_dim=8) -> ir.Model:
    """One GroupQueryAttention with right-padding lengths from the mask, as --target ort lowers it."""

    def value(name, dtype, shape):
        return ir.Value(name=name, type=ir.TensorType(dtype), shape=ir.Shape(shape))

    f32, i64 = ir.DataType.FLOAT, ir.DataType.INT64
    ids, mask = (
        value("input_ids", i64, ["batch", "sequence"]),
        value("attention_mask", i64, ["batch", "total"]),
    )
    q = value("q", f32, ["batch", "sequence", heads * head_dim])
    k, v = (value(n, f32, ["batch", "sequence", head_dim]) for n in ("k", "v"))
    past_k, past_v = (value(n, f32, ["batch", 1, "past", head_dim]) for n in ("past_k", "past_v"))
    one = ir.Value(name="one", const_value=ir.tensor(np.array([1], np.int64)))
    axis = ir.Value(name="axis", const_value=ir.tensor(np.array([1], np.int64)))
    valid = ir.node("ReduceSum", [mask, axis], {"keepdims": 0})
    seqlens = ir.node(
        "Cast", [ir.node("Sub", [valid.outputs[0], one]).outputs[0]], {"to": ir.DataType.INT32}
    )
    total = ir.node("Shape", [mask], {"start": 1, "end": 2})
    total_i32 = ir.node(
        "Cast", [ir.node("Squeeze", [total.outputs[0]]).outputs[0]], {"to": ir.DataType.INT32}
    )
    gqa = ir.node(
        "GroupQueryAttention",
        [q, k, v, past_k, past_v, seqlens.outputs[0], total_i32.outputs[0]],
        {"num_heads": heads, "kv_num_heads": 1},
        domain="com.microsoft",
        num_outputs=3,
    )
    nodes = [
        valid,
        seqlens.inputs[0].producer(),
        seqlens,
        total,
        total_i32.inputs[0].producer(),
        total_i32,
        gqa,
    ]
    gqa.outputs[0].name = "y"
    graph = ir.Graph(
        [ids, mask, q, k, v, past_k, past_v],
        [gqa.outputs[0]],
        nodes=nodes,
        initializers=[one, axis],
        opset_imports={"": 21, "com.microsoft": 1},
    )
    return ir.Model(graph, ir_version=10)


def test_pass_on_a_hand_built_graph(tmp_path):
    rng = np.random.default_rng(0)
    B, T, H, D = 2, 5, 2, 8
    q, k, v = (rng.standard_normal((B, T, n), dtype=np.float32) for n in (H * D, D, D))
    mask = np.array([[1] * T, [0, 0, 1, 1, 1]], np.int64)
    # the reference: causal softmax attention over each row's tokens only
    scores = np.einsum("bthd,bsd->bhts", q.reshape(B, T, H, D), k) / np.sqrt(D)
    allowed = np.tril(np.ones((T, T), bool))[None, None] & (mask[:, None, None, :] == 1)
    scores = np.where(allowed, scores, -1e30)  # finite: the padding rows (not compared) stay finite
    p = np.exp(scores - scores.max(-1, keepdims=True))
    want = np.einsum("bhts,bsd->bthd", p / p.sum(-1, keepdims=True), v).reshape(B, T, H * D)
    feeds = {
        "input_ids": np.zeros((B, T), np.int64),
        "attention_mask": mask,
        "q": q,
        "k": k,
        "v": v,
        "past_k": np.zeros((B, 1, 0, D), np.float32),
        "past_v": np.zeros((B, 1, 0, D), np.float32),
    }

    def run(model):
        path = tmp_path / "m.onnx"
        ir.save(model, path)
        return ort.InferenceSession(path, providers=["CPUExecutionProvider"]).run(["y"], feeds)[0]

    model = hand_built_gqa(H, D)
    assert (
        np.abs(run(model)[1, 2:] - want[1, 2:]).max() > 1e-2
    )  # the lowering's lengths: wrong on the left
    result = AnyPaddingFromAttentionMaskPass()(model)
    assert result.modified
    got = run(model)
    assert np.abs(got[0] - want[0]).max() < 1e-5 and np.abs(got[1, 2:] - want[1, 2:]).max() < 1e-5
    with pytest.raises(GraphRefused, match="already has an attention_bias"):
        AnyPaddingFromAttentionMaskPass().requires(model)
