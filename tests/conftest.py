from __future__ import annotations

import os
from dataclasses import dataclass

import pytest
import torch

from mhe_edge.config import ATTENTION_KINDS, ModelConfig
from mhe_edge.models import build_model

# one thread per pytest-xdist worker: the workers already take a core each (two threads each were ~8%
# slower on 2 cores); two in a single process
torch.set_num_threads(
    1 if os.environ.get("PYTEST_XDIST_WORKER") else max(1, min(2, os.cpu_count() or 1))
)


class CodeCarrier:
    """A pickle payload that would create `marker` if it were ever unpickled: proof that code ran."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def tiny_config(arch: str = "decoder", attention: str = "mhe-mul", **overrides) -> ModelConfig:
    fields = dict(
        arch=arch,
        attention=attention,
        n_layers=2,
        d_model=48,
        n_heads=4,
        d_ff=96,
        vocab_size=97,
        max_seq_len=64,
    )
    if attention == "gqa":
        fields["n_kv_heads"] = 2
    fields.update(overrides)
    return ModelConfig(**fields)


def tiny_model(arch: str = "decoder", attention: str = "mhe-mul", seed: int = 0, **overrides):
    return build_model(tiny_config(arch, attention, **overrides), seed=seed)


@dataclass
class CliResult:
    code: int
    stdout: str
    stderr: str


@pytest.fixture
def cli(capsys):
    """Run `mhe-edge ARGS` in-process through the real entry point; returns exit code and output."""
    from mhe_edge.cli import main

    def run(*args: str) -> CliResult:
        capsys.readouterr()
        with pytest.raises(SystemExit) as exit_info:
            main([str(a) for a in args])
        captured = capsys.readouterr()
        return CliResult(int(exit_info.value.code or 0), captured.out, captured.err)

    return run


ALL_KINDS = ATTENTION_KINDS
