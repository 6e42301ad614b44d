"""What the family descriptions share: regex renaming of tensor names and config-field checks."""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from typing import Any

from mhe_edge.errors import CheckpointError


def rename(name: str, rules: list[tuple[str, str]]) -> str:
    for pattern, replacement in rules:
        renamed, hits = re.subn(pattern, replacement, name)
        if hits:
            return renamed
    return name


def inverse(rules: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """The rules that map the folder's names back to ours."""
    back = []
    for pattern, replacement in rules:
        source = "^" + re.escape(replacement.replace(r"\1", "\0")).replace(
            re.escape("\0"), r"(\d+)"
        )
        back.append((source, pattern.lstrip("^").replace(r"(\d+)", r"\1").replace("\\.", ".")))
    return back


def require(hf: dict, model_type: str, checks: dict[str, Callable[[Any], bool]]) -> None:
    """Refuse, by name, a config field whose value would change the computation in a way not implemented."""
    for field, ok in checks.items():
        if field in hf and not ok(hf[field]):
            raise CheckpointError(
                f"{model_type} config field {field}={hf[field]!r} is not supported by mhe-edge"
            )


def token_id(value: Any, vocab: int) -> int | None:
    if isinstance(value, list):  # several end-of-sequence ids: the first is the canonical one
        value = value[0] if value else None
    return (
        value
        if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < vocab
        else None
    )


def with_special_tokens(hf: dict, fields: dict[str, Any]) -> dict[str, Any]:
    vocab = fields["vocab_size"]
    return {
        **fields,
        "bos_token_id": token_id(hf.get("bos_token_id"), vocab),
        "eos_token_id": token_id(hf.get("eos_token_id"), vocab),
    }


def rope_theta(hf: dict, model_type: str) -> float:
    parameters = hf.get("rope_parameters") or {}
    if (
        hf.get("rope_scaling") not in (None, {})
        or parameters.get("rope_type", "default") != "default"
    ):
        scaling = hf.get("rope_scaling") or parameters
        raise CheckpointError(
            f"{model_type} config field rope_scaling={scaling!r} is not supported by mhe-edge"
        )
    return float(parameters.get("rope_theta", hf.get("rope_theta", 10_000.0)))


def attention_kind(n_heads: int, kv_heads: int) -> dict[str, Any]:
    if kv_heads == n_heads:
        return {"attention": "mha"}
    if kv_heads == 1:
        return {"attention": "mqa"}
    return {"attention": "gqa", "n_kv_heads": kv_heads}


# -- config.json schemas: each field's kind, checked before a family reads the config --------------------
REQUIRED = "required"  # a mark in a kind: the field must be present


def positive_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def positive_number(value: Any) -> bool:
    return (
        isinstance(value, (int, float))
        and not isinstance(value, bool)
        and math.isfinite(value)
        and value > 0
    )


def token_ids(value: Any) -> bool:
    """An id, a list of ids (several end-of-sequence tokens) or null."""
    ids = value if isinstance(value, list) else [value]
    return all(v is None or (isinstance(v, int) and not isinstance(v, bool)) for v in ids)


KINDS: dict[str, tuple[Callable[[Any], bool], str]] = {
    "positive int": (positive_int, "a positive integer"),
    "positive number": (positive_number, "a positive finite number"),
    "bool": (lambda v: isinstance(v, bool), "true or false"),
    "text": (lambda v: isinstance(v, str), "a string"),
    "mapping": (lambda v: isinstance(v, dict), "an object"),
    "token ids": (token_ids, "a token id or a list of them"),
    "int": (lambda v: isinstance(v, int) and not isinstance(v, bool), "an integer"),
}


def check_schema(hf: dict, model_type: str, schema: dict[str, str]) -> None:
    """Every field of `schema` ("positive int", "bool", ...; "positive int, required") present when required
    and of its kind when given; null counts as absent for optional fields. One CheckpointError naming the field."""
    for field, kind in schema.items():
        name, _, required = kind.partition(", ")
        value = hf.get(field)
        if value is None:
            if required == REQUIRED:
                raise CheckpointError(f"{model_type} config has no {field}")
            continue
        ok, wanted = KINDS[name]
        if not ok(value):
            raise CheckpointError(
                f"{model_type} config field {field}={value!r:.60} is not {wanted}"
            )
