"""onnxruntime-genai: the genai_config.json written from an export's metadata, the shared-buffer rewrite of
the cache, and onnxruntime-genai's own greedy loop (to check a package against `mhe-edge generate`).

onnxruntime-genai then runs the cache loop, sampling and search, from C, C++, C#, Java, Objective-C and
its Android/iOS packages, with no code of ours. A trained model's package carries its tokenizer
(tokenizer.json and tokenizer_config.json, what og.Tokenizer reads); token-id generation needs none.
"""

from __future__ import annotations

import json
import os
from typing import Any

import numpy as np

from mhe_edge.contract import (
    ATTENTION_MASK,
    INPUT_IDS,
    KEY_GRAPH,
    KEY_IO,
    LOGITS,
    PAST_KEY,
    PAST_VALUE,
    PRESENT_KEY,
    PRESENT_VALUE,
)

CHECK_PROMPT = [3, 1, 4, 1]
CHECK_TEXT = "The "
CHECK_NEW_TOKENS = 12


def genai_config(
    config,
    share_buffer: bool,
    eos_token_id: int,
    filename: str = "model.onnx",
    attention_mask: bool = True,
) -> dict[str, Any]:
    """`attention_mask`: the model takes one (every export since decoders took it; genai pads batches on the right)."""

    def genai_pattern(template: str) -> str:
        return template.replace("{i}", "%d")

    inputs = {
        "input_ids": INPUT_IDS,
        "past_key_names": genai_pattern(PAST_KEY),
        "past_value_names": genai_pattern(PAST_VALUE),
    }
    if share_buffer or attention_mask:
        inputs["attention_mask"] = ATTENTION_MASK
    return {
        "model": {
            "type": "decoder",
            "context_length": config.max_seq_len,
            "vocab_size": config.vocab_size,
            "bos_token_id": config.bos_token_id if config.bos_token_id is not None else 0,
            "pad_token_id": eos_token_id,
            "eos_token_id": eos_token_id,
            "decoder": {
                "session_options": {"log_id": "mhe-edge", "provider_options": []},
                "filename": filename,
                "head_size": config.head_dim,
                "hidden_size": config.d_model,
                "num_attention_heads": config.n_heads,
                "num_hidden_layers": config.n_layers,
                "num_key_value_heads": config.kv_heads,
                "inputs": inputs,
                "outputs": {
                    "logits": LOGITS,
                    "present_key_names": genai_pattern(PRESENT_KEY),
                    "present_value_names": genai_pattern(PRESENT_VALUE),
                },
            },
        },
        "search": {
            "do_sample": False,
            "num_beams": 1,
            "num_return_sequences": 1,
            "top_k": 1,
            "top_p": 1.0,
            "temperature": 1.0,
            "repetition_penalty": 1.0,
            "min_length": 0,
            "max_length": config.max_seq_len,
            "past_present_share_buffer": share_buffer,
            "early_stopping": True,
            "length_penalty": 1.0,
            "no_repeat_ngram_size": 0,
            "diversity_penalty": 0.0,
        },
    }


def genai_greedy(folder: str | os.PathLike, prompt: list[int], new_tokens: int) -> list[int]:
    """onnxruntime-genai's greedy continuation of `prompt` (stops at the config's EOS, without it)."""
    import onnxruntime_genai as og

    return _continue(og.Model(str(folder)), prompt, new_tokens)


def _continue(model, prompt: list[int], new_tokens: int) -> list[int]:
    """onnxruntime-genai's greedy new ids after `prompt` (ending at EOS, without it)."""
    import onnxruntime_genai as og

    params = og.GeneratorParams(model)
    params.set_search_options(max_length=len(prompt) + new_tokens)
    generator = og.Generator(model, params)
    generator.append_tokens(np.array([prompt], dtype=np.int32))
    while not generator.is_done():
        generator.generate_next_token()
    return [int(t) for t in generator.get_sequence(0)[len(prompt) :]]


def genai_text(folder: str | os.PathLike, text: str, new_tokens: int) -> tuple[list[int], str]:
    """og.Tokenizer's ids for `text`, and og.Generator's greedy continuation decoded by og.Tokenizer."""
    import onnxruntime_genai as og

    model = og.Model(str(folder))
    tokenizer = og.Tokenizer(model)
    ids = [int(i) for i in tokenizer.encode(text)]
    return ids, tokenizer.decode(np.array(_continue(model, ids, new_tokens), dtype=np.int32))


def share_cache_buffer(ir_model) -> None:
    """Rewrite an ort-target graph for onnxruntime-genai's `past_present_share_buffer`: an attention_mask
    input feeds GroupQueryAttention's lengths (the cache tensors then have a fixed capacity)."""
    from mhe_edge.passes.seqlens_from_mask import SeqlensFromAttentionMaskPass

    SeqlensFromAttentionMaskPass()(ir_model)
    io = json.loads(ir_model.metadata_props[KEY_IO])
    if ATTENTION_MASK not in io["inputs"]:  # exports from before decoders took the mask
        io["inputs"].insert(1, ATTENTION_MASK)
        io[ATTENTION_MASK] = {
            "dtype": "int64",
            "shape": ["batch", "total_sequence"],
            "meaning": "1 for every token so far",
        }
    ir_model.metadata_props[KEY_IO] = json.dumps(io)
    ir_model.metadata_props[KEY_GRAPH] += "+genai(share_buffer)"
