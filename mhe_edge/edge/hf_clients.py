"""Files for the Hugging Face clients: transformers.js (Node and the browser, on onnxruntime-node/-web) and
Optimum (ORTModelForCausalLM). Both read config.json for the cache they allocate, pad batches on the left,
feed `attention_mask` and one past per cache tensor, and name dimensions as Optimum's exporter does.

What changes in a packaged graph (nothing numerical; the rewrite is checked by `client_greedy`):
- `--target ort` files take left padding (edge/padding.py): both clients pad on the left.
- Graph I/O dimensions carry the exporter's names: `batch_size` (transformers.js sizes an empty past by
  that name, and by nothing else), `sequence_length`, `past_sequence_length`, `total_sequence_length`.
- For transformers.js a multi-query GPTBigCode's cache is one tensor per layer, `past_key_values.{i}.key_value`
  (batch, past, 2 * head_dim): keys then values, as GPTBigCode lays them out; Optimum (transformers 4.54+)
  and Llama-family packages keep our `.key`/`.value` (batch, 1, past, head_dim).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from mhe_edge.contract import PAST_KEY, PAST_VALUE, PRESENT_KEY, PRESENT_VALUE

DIM_NAMES = {
    "batch": "batch_size",
    "sequence": "sequence_length",
    "past_sequence": "past_sequence_length",
    "past_sequence + sequence": "total_sequence_length",
}
KEY_VALUE = "past_key_values.{i}.key_value"
PRESENT_KEY_VALUE = "present.{i}.key_value"


def rename_dims(ir_model) -> None:
    """The graph inputs' and outputs' symbolic dimensions under the names the clients look for."""
    import onnx_ir as ir

    for value in list(ir_model.graph.inputs) + list(ir_model.graph.outputs):
        if value.shape is None:
            continue
        dims = [
            ir.SymbolicDim(DIM_NAMES.get(d.value, d.value))
            if isinstance(d, ir.SymbolicDim) and d.value is not None
            else d
            for d in value.shape
        ]
        value.shape = ir.Shape(dims)


def merge_key_value(ir_model, n_layers: int, head_dim: int) -> None:
    """Each layer's past/present key and value as one GPTBigCode `key_value` tensor (batch, seq, 2 * d)."""
    import onnx_ir as ir

    graph = ir_model.graph
    axis1 = ir.Value(name="key_value_axis1", const_value=ir.tensor(np.array([1], np.int64)))
    split = ir.Value(
        name="key_value_split", const_value=ir.tensor(np.array([head_dim, head_dim], np.int64))
    )
    graph.register_initializer(axis1)
    graph.register_initializer(split)
    inputs = {v.name: v for v in graph.inputs}
    outputs = {v.name: v for v in graph.outputs}
    first = next(iter(graph))
    for i in range(n_layers):
        key, value = inputs[PAST_KEY.format(i=i)], inputs[PAST_VALUE.format(i=i)]
        dtype = key.dtype
        merged = ir.Value(
            name=KEY_VALUE.format(i=i),
            type=ir.TensorType(dtype),
            shape=ir.Shape(["batch_size", "past_sequence_length", 2 * head_dim]),
        )
        halves = ir.node("Split", [merged, split], {"axis": 2}, num_outputs=2)  # (B, P, d) each
        key_heads = ir.node("Unsqueeze", [halves.outputs[0], axis1])  # (B, 1, P, d)
        value_heads = ir.node("Unsqueeze", [halves.outputs[1], axis1])
        graph.insert_before(first, [halves, key_heads, value_heads])
        key.replace_all_uses_with(key_heads.outputs[0])
        value.replace_all_uses_with(value_heads.outputs[0])
        position = list(graph.inputs).index(key)
        graph.inputs.remove(key)
        graph.inputs.remove(value)
        graph.inputs.insert(position, merged)

        present_key = outputs[PRESENT_KEY.format(i=i)]
        present_value = outputs[PRESENT_VALUE.format(i=i)]
        squeezed = [ir.node("Squeeze", [v, axis1]) for v in (present_key, present_value)]
        joined = ir.node("Concat", [s.outputs[0] for s in squeezed], {"axis": -1})
        joined.outputs[0].name = PRESENT_KEY_VALUE.format(i=i)
        joined.outputs[0].type = ir.TensorType(dtype)
        joined.outputs[0].shape = ir.Shape(["batch_size", "total_sequence_length", 2 * head_dim])
        graph.extend([*squeezed, joined])
        position = list(graph.outputs).index(present_key)
        graph.outputs.remove(present_key)
        graph.outputs.remove(present_value)
        graph.outputs.insert(position, joined.outputs[0])
        present_key.name, present_value.name = (
            f"{present_key.name}.heads",
            f"{present_value.name}.heads",
        )


def _empty_past(session, batch: int) -> dict[str, np.ndarray]:
    """As transformers.js sizes it: from the input's metadata, `batch_size` -> batch, other names -> 0."""
    feeds = {}
    for meta in session.get_inputs():
        if not meta.name.startswith("past_key_values."):
            continue
        shape = [
            d if isinstance(d, int) else (batch if d == "batch_size" else 0) for d in meta.shape
        ]
        dtype = np.float16 if meta.type == "tensor(float16)" else np.float32
        feeds[meta.name] = np.zeros(shape, dtype)
    return feeds


def client_greedy(
    path: str | os.PathLike, prompts: list[list[int]], new_tokens: int, pad_id: int
) -> list[list[int]]:
    """A packaged file's greedy ids as the clients drive it: prompts padded on the left, the mask extended
    by a 1 per step, every present fed back as the past of the same name."""
    from mhe_edge.sessions import create_session

    session = create_session(path)
    width = max(map(len, prompts))
    ids = np.array([[pad_id] * (width - len(p)) + p for p in prompts], np.int64)
    mask = np.array([[0] * (width - len(p)) + [1] * len(p) for p in prompts], np.int64)
    past = _empty_past(session, len(prompts))
    names = [o.name for o in session.get_outputs()]
    steps = []
    for _ in range(new_tokens):
        results = session.run(None, {"input_ids": ids, "attention_mask": mask, **past})
        token = results[0][:, -1].argmax(-1).astype(np.int64)
        steps.append(token)
        present = dict(zip(names, results))
        past = {name: present[name.replace("past_key_values.", "present.", 1)] for name in past}
        ids, mask = token[:, None], np.concatenate([mask, np.ones((len(prompts), 1), np.int64)], 1)
    return np.stack(steps, 1).tolist()


def write_generation_config(folder: Path, config) -> None:
    """generation_config.json: greedy, with the special ids (the context length is config.json's
    max_position_embeddings)."""
    generation = {
        "bos_token_id": config.bos_token_id,
        "eos_token_id": config.eos_token_id,
        "pad_token_id": config.eos_token_id,
        "do_sample": False,
    }
    (folder / "generation_config.json").write_text(json.dumps(generation, indent=2) + "\n")


def write_tokenizer(folder: Path, tokenizer, max_seq_len: int) -> None:
    """tokenizer.json, special_tokens_map.json and a tokenizer_config.json clients read as it is: only the
    inputs the model takes (no token_type_ids), left padding, and the context length."""
    tokenizer.save(folder)
    path = folder / "tokenizer_config.json"
    settings = json.loads(path.read_text())
    settings.update(
        model_input_names=["input_ids", "attention_mask"],
        padding_side="left",
        model_max_length=max_seq_len,
    )
    path.write_text(json.dumps(settings, indent=2) + "\n")
