"""The base of every typed result the public API returns: `to_dict()` is what the CLI's `--json` prints."""

from __future__ import annotations

import dataclasses
import math
from typing import Any


def json_safe(value: Any) -> Any:
    """Plain JSON values: records turned into dicts, and non-finite floats into None (JSON has no NaN)."""
    if hasattr(value, "to_dict"):
        value = value.to_dict()
    elif dataclasses.is_dataclass(value) and not isinstance(value, type):
        value = dataclasses.asdict(value)
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


@dataclasses.dataclass
class Result:
    def to_dict(self) -> dict[str, Any]:
        return {f.name: json_safe(getattr(self, f.name)) for f in dataclasses.fields(self)}
