"""`package --format transformers-js` and `--format optimum`: folders those libraries load with no edit.

transformers.js (`AutoModelForCausalLM.from_pretrained(folder, {dtype})`) reads `onnx/model.onnx` and its
dtype-suffixed siblings (`model_fp16.onnx`, `model_quantized.onnx` for int8, `model_q4.onnx`); Optimum's
`ORTModelForCausalLM.from_pretrained(folder, file_name=...)` reads the same names at the top. Both read
config.json (written as `mhe-edge fold` writes it, so model_type is the family the model folds to:
gpt_bigcode or llama), generation_config.json and the tokenizer files with a tokenizer_config.json that
names the inputs the model takes. Each precision is optimized from the export, its I/O renamed as the
clients expect (edge/hf_clients.py), and checked before the folder appears: the file driven as the
clients drive it (left padding, a mask growing by one per step) gives the tokens `mhe-edge generate` gives
with the optimized file, and a left-padded batch of two prompts gives each row its tokens alone.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mhe_edge.errors import ParityError, RequestError
from mhe_edge.results import Result

CLIENT_FORMATS = ("transformers-js", "optimum")
PRECISIONS = ("fp32", "fp16", "int8", "int4")
FILE_NAMES = {  # transformers.js's dtype suffixes (Optimum takes any file_name)
    "fp32": "model.onnx",
    "fp16": "model_fp16.onnx",
    "int8": "model_quantized.onnx",
    "int4": "model_q4.onnx",
}
CHECK_PROMPTS = ([3, 1, 4, 1, 5, 9], [2, 6, 5])
CHECK_NEW_TOKENS = 8


@dataclass
class ClientPackageReport(Result):
    folder: str
    format: str  # transformers-js or optimum
    model_type: str  # the family in config.json: gpt_bigcode or llama
    target: str
    files: dict[str, str] = field(default_factory=dict)  # precision -> path in the folder
    check: dict[str, Any] = field(
        default_factory=dict
    )  # per precision: tokens as the client drives it


def parse_precisions(text: str | list[str]) -> list[str]:
    wanted = text.split(",") if isinstance(text, str) else list(text)
    wanted = [p.strip() for p in wanted if p.strip()]
    bad = [p for p in wanted if p not in PRECISIONS]
    if bad or not wanted:
        raise RequestError(
            f"precisions are a comma-separated list of {', '.join(PRECISIONS)}, not {text!r}"
        )
    return list(dict.fromkeys(wanted))


def package_for_client(
    model: str | os.PathLike,
    output: str | os.PathLike,
    *,
    format: str,
    target: str = "ort",
    precisions: str | list[str] = "fp32",
    force: bool = False,
) -> ClientPackageReport:
    """Package a decoder export for transformers.js or Optimum, one file per precision.

    Example: `mhe_edge.package("model.onnx", "model-js", format="transformers-js", precisions="fp32,int4")`
    """
    import onnx_ir as ir

    from mhe_edge.edge.hf_clients import (
        merge_key_value,
        rename_dims,
        write_generation_config,
        write_tokenizer,
    )
    from mhe_edge.edge.padding import take_any_padding
    from mhe_edge.files import check_full, check_output, read_header, save_ir_model, staged_output
    from mhe_edge.passes import TARGETS, optimize
    from mhe_edge.text.tokenizer import tokenizer_of_export
    from mhe_edge.workflows.fold import family_config

    if format not in CLIENT_FORMATS:
        raise RequestError(f"format must be one of {', '.join(CLIENT_FORMATS)}, not {format!r}")
    if target not in TARGETS:
        raise RequestError(f"target must be one of {', '.join(TARGETS)}, not {target!r}")
    wanted = parse_precisions(precisions)
    if "int4" in wanted and target == "portable":
        raise RequestError("int4 (com.microsoft.MatMulNBits) needs --target ort or std")
    source = Path(model)
    header = read_header(source)
    config = header.config
    if config.arch != "decoder":
        raise RequestError(
            f"{source.name} is an encoder; {format} packages are for text generation"
        )
    if header.target is not None:
        raise RequestError(
            f"{source.name} is optimized already (target {header.target}); package the export itself,"
            " so that each precision is made from it"
        )
    hf = family_config(config)  # refuses, naming why, what no family represents
    folder = check_output(output, force=force, folder=True, inputs=[source])
    merged = format == "transformers-js" and hf["model_type"] == "gpt_bigcode"
    files, check = {}, {}
    with staged_output(folder, force=force, folder=True) as stage:
        onnx_dir = stage / "onnx" if format == "transformers-js" else stage
        onnx_dir.mkdir(exist_ok=True)
        scratch = stage / ".optimized"
        scratch.mkdir()
        for precision in wanted:
            optimized = scratch / FILE_NAMES[precision]
            optimize(
                source,
                optimized,
                target=target,
                fp16=precision == "fp16",
                int8=precision == "int8",
                int4=precision == "int4",
            )
            graph = ir.load(optimized)
            if target == "ort":
                take_any_padding(graph)
            rename_dims(graph)
            if merged:
                merge_key_value(graph, config.n_layers, config.d_model // config.n_heads)
            packaged = onnx_dir / FILE_NAMES[precision]
            save_ir_model(graph, packaged)
            check_full(packaged)
            check[precision] = _check_file(optimized, packaged, config, precision)
            files[precision] = str(packaged.relative_to(stage))
        for path in scratch.iterdir():
            path.unlink()
        scratch.rmdir()
        (stage / "config.json").write_text(
            json.dumps(
                {**hf, "transformers.js_config": {"dtype": wanted[0]}}
                if format == "transformers-js"
                else hf,
                indent=2,
            )
            + "\n"
        )
        write_generation_config(stage, config)
        tokenizer = tokenizer_of_export(header.metadata, source.name)
        if tokenizer is not None:
            write_tokenizer(stage, tokenizer, config.max_seq_len)
    return ClientPackageReport(
        folder=str(folder),
        format=format,
        model_type=hf["model_type"],
        target=target,
        files=files,
        check=check,
    )


def _check_file(optimized: Path, packaged: Path, config, precision: str) -> dict[str, Any]:
    """The packaged file, driven as the clients drive it, against `mhe-edge generate` on the optimized file:
    each prompt alone, and both as one left-padded batch. int8 is ONNX Runtime's dynamic quantization: one
    activation scale per tensor, over the whole batch, so a row's tokens can depend on the other rows (and
    on the padding) in any client; that is reported, not refused."""
    from mhe_edge.edge.hf_clients import client_greedy
    from mhe_edge.runtime import ExportedModel

    runner = ExportedModel(optimized)
    want = [runner.generate(np.array([p]), CHECK_NEW_TOKENS)[0].tolist() for p in CHECK_PROMPTS]
    pad = config.eos_token_id if config.eos_token_id is not None else 0
    alone = [client_greedy(packaged, [p], CHECK_NEW_TOKENS, pad)[0] for p in CHECK_PROMPTS]
    batch = client_greedy(packaged, list(CHECK_PROMPTS), CHECK_NEW_TOKENS, pad)
    if alone != want:
        raise ParityError(f"{packaged.name} generated {alone}; mhe-edge generate {want}")
    report = {"prompts": [list(p) for p in CHECK_PROMPTS], "tokens": want, "status": "passed"}
    if batch != want and precision == "int8":
        report["left_padded_batch"] = (
            f"differs from each prompt alone ({batch}): dynamic int8 quantizes activations per batch"
        )
    elif batch != want:
        raise ParityError(
            f"{packaged.name} gave a left-padded batch {batch}; each prompt alone {want}"
        )
    else:
        report["left_padded_batch"] = "equal to each prompt alone"
    return report
