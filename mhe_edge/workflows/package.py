"""`package --format genai`: a folder onnxruntime-genai loads as it is (the optimized model, its external data
if any, a genai_config.json written from the export's metadata, and the tokenizer files when the export
carries a tokenizer), checked token for token against `mhe-edge generate` when onnxruntime-genai is
installed, and for a model with a tokenizer text for text (og.Tokenizer and og.Generator against
`mhe-edge generate --text`), before the folder appears."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mhe_edge.contract import ATTENTION_MASK
from mhe_edge.errors import ParityError, RequestError
from mhe_edge.files import check_full, check_output, read_header, save_ir_model, staged_output
from mhe_edge.options import TARGET
from mhe_edge.results import Result

FORMATS = ("genai",)
MODEL_FILE = "model.onnx"


@dataclass
class PackageReport(Result):
    folder: str
    model: str
    config: str  # genai_config.json
    target: str  # the optimize target of the packaged model (the input's own, if it was optimized already)
    share_buffer: bool
    eos_token_id: int
    model_bytes: int
    check: dict[str, Any] = field(default_factory=dict)  # onnxruntime-genai's tokens vs mhe-edge's


def package(
    model: str | os.PathLike,
    output: str | os.PathLike,
    *,
    format: str = "genai",
    target: str = "ort",
    share_buffer: bool = False,
    eos_token_id: int | None = None,
    force: bool = False,
) -> PackageReport:
    """Package a decoder export for onnxruntime-genai (optimizing it for `target` first unless it is optimized).

    Example: `mhe_edge.package("model.onnx", "model-genai", share_buffer=True).check["status"]`
    """
    import onnx_ir as ir

    from mhe_edge.edge.genai import (
        CHECK_NEW_TOKENS,
        CHECK_PROMPT,
        genai_config,
        genai_greedy,
        share_cache_buffer,
    )
    from mhe_edge.passes import optimize
    from mhe_edge.runtime import ExportedModel
    from mhe_edge.text.tokenizer import tokenizer_of_export

    if format not in FORMATS:
        raise RequestError(f"format must be one of {', '.join(FORMATS)}, not {format!r}")
    TARGET.check(target)
    source = Path(model)
    header = read_header(source)
    config = header.config
    if config.arch != "decoder":
        raise RequestError(
            f"{source.name} is an encoder; onnxruntime-genai generates with decoders"
        )
    packaged_target = header.target or target
    if share_buffer and packaged_target != "ort":
        raise RequestError(
            "a shared cache buffer needs --target ort (GroupQueryAttention updates the cache in place)"
        )
    folder = check_output(output, force=force, folder=True, inputs=[source])
    if eos_token_id is not None:
        eos = eos_token_id
    else:  # the model's own, else the last id (a random-weight model has no tokenizer to say)
        eos = config.eos_token_id if config.eos_token_id is not None else config.vocab_size - 1
    if not 0 <= eos < config.vocab_size:
        raise RequestError(f"eos token id {eos} is outside the vocabulary [0, {config.vocab_size})")

    with staged_output(folder, force=force, folder=True) as stage:
        onnx_path = stage / MODEL_FILE
        if header.target is None:
            optimize(source, onnx_path, target=target)
        else:  # already optimized: copy it with its external data, under the names its header uses
            shutil.copyfile(source, onnx_path)
            for name in header.external_files:
                shutil.copyfile(source.parent / name, stage / name)
        if share_buffer:
            graph = ir.load(onnx_path)
            share_cache_buffer(graph)
            rewritten = stage / f"shared.{MODEL_FILE}"
            save_ir_model(graph, rewritten)
            check_full(rewritten)
            os.replace(rewritten, onnx_path)
        has_mask = ATTENTION_MASK in header.io.get("inputs", []) or share_buffer
        (stage / "genai_config.json").write_text(
            json.dumps(genai_config(config, share_buffer, eos, MODEL_FILE, has_mask), indent=2)
        )
        tokenizer = tokenizer_of_export(header.metadata, source.name)
        if tokenizer is not None:
            tokenizer.save(stage)

        check: dict[str, Any] = {"prompt": CHECK_PROMPT, "new_tokens": CHECK_NEW_TOKENS}
        if importlib.util.find_spec("onnxruntime_genai") is None:
            check["status"] = (
                "skipped: onnxruntime-genai is not installed (pip install 'mhe-edge[genai]')"
            )
        else:
            expected = (
                ExportedModel(source)
                .generate(np.array([CHECK_PROMPT]), CHECK_NEW_TOKENS)[0]
                .tolist()
            )
            if eos in expected:  # onnxruntime-genai stops at EOS and does not append it
                expected = expected[: expected.index(eos)]
            got = genai_greedy(stage, CHECK_PROMPT, CHECK_NEW_TOKENS)
            check.update(
                status="passed" if got == expected else "failed",
                genai_tokens=got,
                mhe_edge_tokens=expected,
            )
            if got != expected:
                raise ParityError(
                    f"onnxruntime-genai generated {got}, mhe-edge generate {expected}"
                )
            if tokenizer is not None:
                check["text"] = _check_text(source, stage, tokenizer)
        model_bytes = onnx_path.stat().st_size
    return PackageReport(
        folder=str(folder),
        model=str(folder / MODEL_FILE),
        config=str(folder / "genai_config.json"),
        target=packaged_target,
        share_buffer=share_buffer,
        eos_token_id=eos,
        model_bytes=model_bytes,
        check=check,
    )


def _check_text(source: Path, stage: Path, tokenizer) -> dict[str, Any]:
    """og.Tokenizer must encode as our tokenizer does, and og.Generator's greedy text equal `generate --text`'s."""
    from mhe_edge.edge.genai import CHECK_NEW_TOKENS, CHECK_TEXT, genai_text
    from mhe_edge.runtime.text_generation import generate_text

    ids, text = genai_text(stage, CHECK_TEXT, CHECK_NEW_TOKENS)
    if ids != tokenizer.encode(CHECK_TEXT):
        raise ParityError(
            f"onnxruntime-genai's tokenizer encodes {CHECK_TEXT!r} as {ids}, mhe-edge's as"
            f" {tokenizer.encode(CHECK_TEXT)}"
        )
    ours = generate_text(source, CHECK_TEXT, max_new_tokens=CHECK_NEW_TOKENS).generations[0].text
    if text != ours:
        raise ParityError(
            f"onnxruntime-genai generated {text!r}, mhe-edge generate --text {ours!r}"
        )
    return {"prompt": CHECK_TEXT, "genai_text": text, "mhe_edge_text": ours, "status": "passed"}
