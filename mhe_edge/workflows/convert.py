"""`convert`: a pretrained MHA/GQA model (any folder or checkpoint mhe-edge reads) -> an MHE model folder.

Every attention layer is refitted (models/conversion.py); everything else (embeddings, norms, MLP,
positions) is copied as it is, and the tokenizer files with it. The source is read a block at a time and
the output written a shard at a time, so the peak memory is about one layer plus one shard, not the model.
When the source carries a tokenizer mhe-edge can drive and text to score (`text`, or the held-out split its
training record names), the report gives held-out bits per byte of the source and of the converted model.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mhe_edge.accounting import count_parameters, kv_cache_bytes_per_token
from mhe_edge.errors import CheckpointError, OutputError, RequestError, first_line
from mhe_edge.files import check_output, staged_output
from mhe_edge.results import Result

# Output shards: an eighth of the source (writing one copies it, so the writer holds up to a quarter of the
# source), at least 16 MiB (small models stay one model.safetensors), at most 2 GiB.
MIN_SHARD_BYTES, MAX_SHARD_BYTES = 16 << 20, 2 << 30
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")


@dataclass
class LayerFit(Result):
    layer: int
    error: dict[str, float]  # projection (q, k, v) -> relative fit error of the chosen init
    mean_error: dict[str, float]  # the same for mean pooling (the baseline)


@dataclass
class ConvertReport(Result):
    path: str
    source: str
    attention: str  # the converted model's attention
    init: str  # mean or svd
    source_attention: str
    config: dict[str, Any]
    layers: list[LayerFit]
    parameters: dict[str, int]  # source, converted
    kv_cache_bytes_per_token: dict[str, int]  # source, converted (fp32)
    held_out: (
        dict[str, Any] | None
    )  # bits per byte of source and converted; None without a tokenizer
    held_out_note: str  # why there is no held_out, or what was scored
    files: list[str] = field(default_factory=list)


def convert(
    source: str | os.PathLike,
    output: str | os.PathLike,
    *,
    attention: str = "mhe-mul",
    init: str = "svd",
    text: Sequence[str | os.PathLike] | None = None,
    force: bool = False,
    on_step: Callable[[str], None] | None = None,
) -> ConvertReport:
    """Convert a pretrained MHA/GQA model to MHE-MUL, MHE-ADD (or mean-pooled MQA) and write a model folder.

    Example: `mhe_edge.convert("my-llama", "my-llama-mhe", attention="mhe-mul", init="svd").layers[0].error`
    """
    from mhe_edge import options
    from mhe_edge.models.conversion import convert_attention, converted_config
    from mhe_edge.models.streaming import REST, open_source

    step = on_step or (lambda name: None)
    options.check_all((options.CONVERT_ATTENTION, attention), (options.CONVERT_INIT, init))
    folder = check_output(output, force=force, folder=True, inputs=[source])
    step("read headers")
    src = open_source(source)
    target = converted_config(src.config, attention)  # refusals come before any output
    if Path(source).is_dir():  # copied into the output as it is: checked first
        from mhe_edge.text.tokenizer import read_tokenizer_config

        read_tokenizer_config(source)
    tokenizer_note = _tokenizer_note(Path(source))
    # the text is read and tokenized now, so that text the tokenizer cannot encode is refused before output
    try:
        text_plan = _text_plan(Path(source), text) if tokenizer_note is None else None
    except RequestError as exc:
        if text:
            raise
        # the recorded training text is not at hand (files are recorded by name and hash, not path)
        text_plan, tokenizer_note = None, f"no held-out score: {first_line(exc)}"
    layers: list[LayerFit] = []
    with staged_output(folder, force=force, folder=True) as stage:
        # Written in the source's own precision: a bfloat16 model stays half the bytes of float32.
        shard_bytes = min(max(src.source_bytes // 8, MIN_SHARD_BYTES), MAX_SHARD_BYTES)
        writer = _ShardWriter(stage, count_parameters(target)["total"], src.dtype, shard_bytes)
        previous = None
        for index, state in src.groups():
            if index != previous:
                step("embeddings and head" if index == REST else f"layer {index}")
                previous = index
            if index != REST:
                prefix = f"blocks.{index}.attn."
                converted, errors, baseline = convert_attention(
                    src.config, target, state, prefix, init
                )
                state.update(converted)
                layers.append(LayerFit(index, errors, baseline))
            writer.add(state)
            del state
        files = writer.close(target)
        files += _copy_tokenizer(Path(source), stage)
        if text_plan is not None and text_plan["record"] is not None:
            record = {"corpus": text_plan["record"], "converted_from": src.name}
            (stage / "training.json").write_text(json.dumps(record, indent=2) + "\n")
            files.append("training.json")
        _check_loads(stage, target)
    held_out = None
    note = tokenizer_note or "no held-out score: the source records no training text; give --text"
    if text_plan is not None:
        step("score held-out text")
        held_out = _score(Path(source), folder, text_plan)
        note = text_plan["description"]
    return ConvertReport(
        str(folder),
        src.name,
        target.attention,
        init,
        src.config.attention,
        target.to_dict(),
        layers,
        {
            "source": count_parameters(src.config)["total"],
            "converted": count_parameters(target)["total"],
        },
        {
            "source": kv_cache_bytes_per_token(src.config),
            "converted": kv_cache_bytes_per_token(target),
        },
        held_out,
        note,
        sorted(files),
    )


class _ShardWriter:
    """Tensors in, safetensors shards out (folder names); one model.safetensors when the model is small."""

    def __init__(self, folder: Path, parameters: int, dtype, shard_bytes: int):
        self.dtype, self.folder, self.shard_bytes = dtype, folder, shard_bytes
        self.single = parameters * dtype.itemsize <= shard_bytes
        self.buffer: dict = {}
        self.buffered = 0
        self.shards: list[tuple[str, list[str]]] = []

    def add(self, state: dict) -> None:
        from mhe_edge.models import families

        folder_name = families.get(families.OURS).source_name
        for key in list(state):
            tensor = state.pop(key).to(self.dtype).contiguous()
            size = tensor.numel() * tensor.element_size()
            if not self.single and self.buffered + size > self.shard_bytes:
                self._flush()  # before, so that no shard grows past the limit (but for one larger tensor)
            self.buffer[folder_name(key)] = tensor
            self.buffered += size

    def _flush(self) -> None:
        from safetensors.torch import save_file

        if not self.buffer:
            return
        name = f"shard-{len(self.shards) + 1:05d}.safetensors"
        try:
            save_file(self.buffer, str(self.folder / name), metadata={"format": "pt"})
        except OSError as exc:
            raise OutputError(
                f"cannot write {name}: {first_line(exc, 200)}; nothing was written"
            ) from exc
        self.shards.append((name, list(self.buffer)))
        self.buffer, self.buffered = {}, 0

    def close(self, config) -> list[str]:
        from mhe_edge.models.folder import (
            CONFIG_FILE,
            GENERATION_FILE,
            INDEX_FILE,
            WEIGHTS_FILE,
            hf_config,
        )

        if self.single:
            from safetensors.torch import save_file

            save_file(self.buffer, str(self.folder / WEIGHTS_FILE), metadata={"format": "pt"})
            files = [WEIGHTS_FILE]
        else:
            self._flush()
            # The Hugging Face names: model-00001-of-00003.safetensors, and the index naming them.
            total, weight_map, files = len(self.shards), {}, []
            for i, (staged, names) in enumerate(self.shards, start=1):
                final = f"model-{i:05d}-of-{total:05d}.safetensors"
                os.replace(self.folder / staged, self.folder / final)
                weight_map.update(dict.fromkeys(names, final))
                files.append(final)
            index = {"metadata": {}, "weight_map": weight_map}
            (self.folder / INDEX_FILE).write_text(json.dumps(index, indent=2) + "\n")
            files.append(INDEX_FILE)
        generation = {
            "bos_token_id": config.bos_token_id,
            "eos_token_id": config.eos_token_id,
            "do_sample": False,
        }
        described = {**hf_config(config), "torch_dtype": str(self.dtype).removeprefix("torch.")}
        (self.folder / CONFIG_FILE).write_text(json.dumps(described, indent=2) + "\n")
        (self.folder / GENERATION_FILE).write_text(json.dumps(generation, indent=2) + "\n")
        return [*files, CONFIG_FILE, GENERATION_FILE]


def _check_loads(stage: Path, target) -> None:
    """The staged folder must read back as the config it claims (headers only: no second copy in memory)."""
    from mhe_edge.models.streaming import open_source

    config = open_source(stage).config
    if config != target:
        raise CheckpointError("the converted folder does not read back as its own config")


def _tokenizer_note(source: Path) -> str | None:
    """None when the source has a tokenizer mhe-edge drives; else why held-out text cannot be scored."""
    from mhe_edge.text.tokenizer import has_tokenizer, load_tokenizer

    if not source.is_dir() or not has_tokenizer(source):
        return "no held-out score: the source has no tokenizer.json"
    try:
        load_tokenizer(source)
    except CheckpointError as exc:
        return f"no held-out score: {first_line(exc)}"
    return None


def _text_plan(source: Path, text) -> dict[str, Any] | None:
    """What to score: the given files, else the held-out split the source's training record names, with
    its ids (refused when they do not decode back to it: bytes never scored would count)."""
    plan = _text_to_score(source, text)
    if plan is not None:
        from mhe_edge.text.tokenizer import load_tokenizer

        plan["ids"] = load_tokenizer(source).ids_exactly(plan["body"], "the text to score")
    return plan


def _text_to_score(source: Path, text) -> dict[str, Any] | None:
    from mhe_edge.text.corpus import RECORD_FILE, check_corpus_record
    from mhe_edge.text.held_out import scored_text

    record_path, corpus_record = source / RECORD_FILE, None
    if (
        source.is_dir() and record_path.is_file()
    ):  # a trained run's, or a converted folder's (corpus only)
        try:
            corpus_record = json.loads(record_path.read_text())["corpus"]
        except (ValueError, KeyError, TypeError) as exc:
            raise CheckpointError(f"{source.name}/{RECORD_FILE} is damaged: {exc}") from exc
        check_corpus_record(corpus_record, f"{source.name}/{RECORD_FILE} corpus")
    found = scored_text(text, corpus_record)
    if found is None:
        return None
    return {
        "body": found.body,
        "train": found.train_documents,
        "record": found.record,
        "description": found.description,
    }


def _score(source: Path, converted: Path, plan: dict[str, Any]) -> dict[str, Any]:
    """Bits per byte of both models on identical windows (and a bigram baseline when the training text is known)."""
    from mhe_edge.models import load_model
    from mhe_edge.text.scoring import bigram_score, score
    from mhe_edge.text.tokenizer import load_tokenizer
    from mhe_edge.training.workflow import torch_logits

    tokenizer = load_tokenizer(source)
    body = plan["body"]
    ids, n_bytes = plan["ids"], len(body.encode("utf-8"))
    result: dict[str, Any] = {"bytes": n_bytes}
    for key, path in (("source_bits_per_byte", source), ("bits_per_byte", converted)):
        model = load_model(path)
        if model.config.arch != "decoder":
            return {"bytes": n_bytes, "note": "encoders are not scored on text"}
        window = min(model.config.max_seq_len, 256)
        result[key] = score(
            torch_logits(model), ids, n_bytes, tokenizer.bos_token_id, window
        ).bits_per_byte
        del model
    if plan["train"] is not None:
        eos = tokenizer.eos_token_id
        train_ids = [i for doc in tokenizer.encode_batch(plan["train"]) for i in [*doc, eos]]
        result["bigram_bits_per_byte"] = bigram_score(
            train_ids, ids, n_bytes, tokenizer.bos_token_id, tokenizer.vocab_size
        ).bits_per_byte
    return result


def _copy_tokenizer(source: Path, stage: Path) -> list[str]:
    if not source.is_dir():
        return []
    copied = []
    for name in TOKENIZER_FILES:
        path = source / name
        if path.is_file() and not path.is_symlink():
            shutil.copyfile(path, stage / name)
            copied.append(name)
    return copied
