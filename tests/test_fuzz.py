"""Fuzzing (hypothesis, bounded so CI stays fast): whatever the bytes or arguments, mhe-edge either
works or refuses with its own error: never another exception, never a traceback."""

import os
import tempfile
from pathlib import Path

import pytest
from conftest import tiny_model
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mhe_edge import load_model, save_checkpoint
from mhe_edge.errors import CheckpointError, MheEdgeError
from mhe_edge.files import read_header

FUZZ = settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


@pytest.fixture(scope="module")
def valid_files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("valid")
    model = tiny_model(
        attention="mhe-add",
        n_layers=1,
        d_model=16,
        n_heads=2,
        d_ff=32,
        vocab_size=11,
        max_seq_len=8,
    )
    save_checkpoint(model, folder / "m.pt")
    save_checkpoint(model, folder / "m.safetensors")
    from mhe_edge.exporters import export

    export(model, folder / "m.onnx")
    return {
        suffix: (folder / f"m{suffix}").read_bytes() for suffix in (".pt", ".safetensors", ".onnx")
    }


def _mutate(data: bytes, edits, cut) -> bytes:
    buffer = bytearray(data[: max(1, int(len(data) * cut))])
    for position, value in edits:
        buffer[position % len(buffer)] = value
    return bytes(buffer)


@FUZZ
@given(data=st.binary(max_size=2048), suffix=st.sampled_from([".pt", ".safetensors"]))
def test_checkpoint_loader_on_random_bytes(data, suffix):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"x{suffix}"
        path.write_bytes(data)
        with pytest.raises(CheckpointError):
            load_model(path)


@FUZZ
@given(
    suffix=st.sampled_from([".pt", ".safetensors"]),
    cut=st.floats(0.0, 1.0),
    edits=st.lists(st.tuples(st.integers(0, 10**7), st.integers(0, 255)), max_size=8),
)
def test_checkpoint_loader_on_mutated_checkpoints(valid_files, suffix, cut, edits):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"x{suffix}"
        path.write_bytes(_mutate(valid_files[suffix], edits, cut))
        try:
            load_model(path)  # a harmless mutation (say, in a weight's bytes) may still load
        except CheckpointError:
            pass


@FUZZ
@given(
    cut=st.floats(0.0, 1.0),
    edits=st.lists(st.tuples(st.integers(0, 10**7), st.integers(0, 255)), max_size=8),
)
def test_onnx_reader_on_mutated_exports(valid_files, cut, edits):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "x.onnx"
        path.write_bytes(_mutate(valid_files[".onnx"], edits, cut))
        try:
            read_header(path)
        except MheEdgeError:
            pass


ARG = st.one_of(
    st.integers(-5, 10**6).map(str),
    st.text(max_size=12),
    st.sampled_from(
        [
            "--prompt",
            "--max-new-tokens",
            "--provider",
            "--batch",
            "--seq-len",
            "--heads",
            "--d-model",
            "--kv-heads",
            "--preset",
            "--attention",
            "--json",
            "cpu",
            "cuda",
            "1,2,3",
            "-1",
            "0",
            "mhe-add",
            "gqa",
            "--force",
            "--layers",
        ]
    ),
)


@FUZZ
@given(
    command=st.sampled_from(["generate", "profile", "init", "inspect", "optimize"]),
    args=st.lists(ARG, max_size=6),
)
def test_cli_argument_parsing(tmp_path, cli, valid_files, command, args):
    model = tmp_path / "m.onnx"
    if not model.exists():
        model.write_bytes(valid_files[".onnx"])
    target = tmp_path / f"fuzz-{os.getpid()}.pt" if command == "init" else model
    if command == "optimize":
        args = [*args, "-o", str(tmp_path / "o.onnx"), "--force"]
    result = cli(command, target, *[a for a in args if "\x00" not in a])
    assert "Traceback" not in result.stderr + result.stdout, (command, args, result.stderr)
    assert result.code in (0, 1, 2, 3, 4, 6, 7), (command, args, result)
    if result.code:
        assert result.stderr.strip(), "a refusal must say why"
