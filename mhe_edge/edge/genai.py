"""`package --format genai`: a folder onnxruntime-genai loads as it is (the optimized model and a
genai_config.json written from the export's metadata), checked against `mhe-edge generate` when
onnxruntime-genai is installed.

onnxruntime-genai then runs the cache loop, sampling and search, from C, C++, C#, Java, Objective-C and
its Android/iOS packages, with no code of ours. No tokenizer is needed for token-id generation.
"""
from __future__ import annotations

import importlib.util
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from mhe_edge.errors import ParityError, RequestError
from mhe_edge.exporters.metadata import KEY_GRAPH, KEY_IO, read_metadata

CHECK_PROMPT = [3, 1, 4, 1]
CHECK_NEW_TOKENS = 12


def genai_config(config, share_buffer: bool, eos_token_id: int, filename: str = "model.onnx") -> dict[str, Any]:
    inputs = {"input_ids": "input_ids", "past_key_names": "past_key_values.%d.key", "past_value_names": "past_key_values.%d.value"}
    if share_buffer:
        inputs["attention_mask"] = "attention_mask"
    return {
        "model": {
            "type": "decoder",
            "context_length": config.max_seq_len,
            "vocab_size": config.vocab_size,
            "bos_token_id": 0,
            "pad_token_id": 0,
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
                "outputs": {"logits": "logits", "present_key_names": "present.%d.key", "present_value_names": "present.%d.value"},
            },
        },
        "search": {
            "do_sample": False, "num_beams": 1, "num_return_sequences": 1, "top_k": 1, "top_p": 1.0,
            "temperature": 1.0, "repetition_penalty": 1.0, "min_length": 0, "max_length": config.max_seq_len,
            "past_present_share_buffer": share_buffer, "early_stopping": True, "length_penalty": 1.0,
            "no_repeat_ngram_size": 0, "diversity_penalty": 0.0,
        },
    }


def genai_greedy(folder: str | os.PathLike, prompt: list[int], new_tokens: int) -> list[int]:
    """onnxruntime-genai's greedy continuation of `prompt` (stops at the config's EOS, without it)."""
    import onnxruntime_genai as og

    model = og.Model(str(folder))
    params = og.GeneratorParams(model)
    params.set_search_options(max_length=len(prompt) + new_tokens)
    generator = og.Generator(model, params)
    generator.append_tokens(np.array([prompt], dtype=np.int32))
    while not generator.is_done():
        generator.generate_next_token()
    return [int(t) for t in generator.get_sequence(0)[len(prompt):]]


def package_genai(
    model: str | os.PathLike,
    output: str | os.PathLike,
    *,
    target: str = "ort",
    share_buffer: bool = False,
    eos_token_id: int | None = None,
    force: bool = False,
) -> dict[str, Any]:
    import onnx_ir as ir

    from mhe_edge.onnx_files import check_full, save_ir_model
    from mhe_edge.passes import optimize
    from mhe_edge.passes.seqlens_from_mask import SeqlensFromAttentionMaskPass
    from mhe_edge.runtime import ExportedModel

    source, folder = Path(model), Path(output)
    config, props, _ = read_metadata(source)
    if config.arch != "decoder":
        raise RequestError(f"{source.name} is an encoder; onnxruntime-genai generates with decoders")
    if share_buffer and target != "ort":
        raise RequestError("a shared cache buffer needs --target ort (GroupQueryAttention updates the cache in place)")
    if not folder.parent.is_dir():
        raise RequestError(f"output folder {str(folder.parent)!r} does not exist")
    if folder.exists() and not force:
        raise RequestError(f"{str(folder)!r} exists; pass --force to replace it")
    eos = config.vocab_size - 1 if eos_token_id is None else eos_token_id
    if not 0 <= eos < config.vocab_size:
        raise RequestError(f"eos token id {eos} is outside the vocabulary [0, {config.vocab_size})")

    with tempfile.TemporaryDirectory(prefix=f".{folder.name}.", dir=folder.parent) as tmp:
        stage = Path(tmp) / "package"
        stage.mkdir()
        onnx_path = stage / "model.onnx"
        already_optimized = "optimize(" in props.get(KEY_GRAPH, "")
        if already_optimized:
            shutil.copyfile(source, onnx_path)
        else:
            optimize(source, onnx_path, target=target)
        if share_buffer:
            graph = ir.load(onnx_path)
            SeqlensFromAttentionMaskPass()(graph)
            io = json.loads(graph.metadata_props[KEY_IO])
            io["inputs"].insert(1, "attention_mask")
            io["attention_mask"] = {"dtype": "int64", "shape": ["batch", "total_sequence"], "meaning": "1 for every token so far"}
            graph.metadata_props[KEY_IO] = json.dumps(io)
            graph.metadata_props[KEY_GRAPH] += "+genai(share_buffer)"
            onnx_path.unlink()
            save_ir_model(graph, onnx_path)
            check_full(onnx_path)
        (stage / "genai_config.json").write_text(json.dumps(genai_config(config, share_buffer, eos), indent=2))

        check: dict[str, Any] = {"prompt": CHECK_PROMPT, "new_tokens": CHECK_NEW_TOKENS}
        if importlib.util.find_spec("onnxruntime_genai") is None:
            check["status"] = "skipped: onnxruntime-genai is not installed (pip install 'mhe-edge[genai]')"
        else:
            expected = ExportedModel(source).generate(np.array([CHECK_PROMPT]), CHECK_NEW_TOKENS)[0].tolist()
            if eos in expected:  # onnxruntime-genai stops at EOS and does not append it
                expected = expected[: expected.index(eos)]
            got = genai_greedy(stage, CHECK_PROMPT, CHECK_NEW_TOKENS)
            check.update(status="passed" if got == expected else "failed", genai_tokens=got, mhe_edge_tokens=expected)
            if got != expected:
                raise ParityError(f"onnxruntime-genai generated {got}, mhe-edge generate {expected}")
        if folder.exists():
            shutil.rmtree(folder)
        os.replace(stage, folder)
    return {
        "folder": str(folder), "model": str(folder / "model.onnx"), "config": str(folder / "genai_config.json"),
        "target": target, "share_buffer": share_buffer, "eos_token_id": eos, "check": check,
        "model_bytes": (folder / "model.onnx").stat().st_size,
    }
