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
from mhe_edge.contract import KEY_IO
from mhe_edge.errors import CheckpointError, MheEdgeError, ModelFileError
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


def test_metadata_that_is_not_utf8_is_refused(valid_files, tmp_path):
    """A string field protobuf cannot decode comes back as bytes: one clear refusal, not a TypeError (a
    case the mutation search above found)."""
    data = bytearray(valid_files[".onnx"])
    key = data.index(KEY_IO.encode())
    data[data.index(b"{", key) + 1] = 0x80  # no UTF-8 sequence starts with a continuation byte
    (tmp_path / "x.onnx").write_bytes(bytes(data))
    with pytest.raises(ModelFileError, match="not UTF-8"):
        read_header(tmp_path / "x.onnx")  # reads the I/O layout too


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


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3)
    ),
    max_leaves=12,
)
TOKENIZER_FIELDS = ["bos_token", "eos_token", "pad_token", "add_bos_token", "model_max_length",
                    "padding_side", "model_input_names", "chat_template", "added_tokens_decoder",
                    "tokenizer_class", "other"]  # fmt: skip


@FUZZ
@given(
    fields=st.dictionaries(st.sampled_from(TOKENIZER_FIELDS), JSON, max_size=4),
    raw=st.one_of(st.none(), st.binary(max_size=64), st.just(b"[" * 5000 + b"]" * 5000)),
)
def test_tokenizer_config_reader_on_arbitrary_json(fields, raw):
    import json

    from mhe_edge.text.tokenizer import TOKENIZER_CONFIG_FIELDS, read_tokenizer_config

    with tempfile.TemporaryDirectory() as tmp:
        data = raw if raw is not None else json.dumps(fields).encode()
        (Path(tmp) / "tokenizer_config.json").write_bytes(data)
        try:
            settings = read_tokenizer_config(tmp)
        except CheckpointError as exc:
            assert len(str(exc).splitlines()) == 1 and "tokenizer_config.json" in str(exc)
            return
        for field, (ok, _) in TOKENIZER_CONFIG_FIELDS.items():  # accepted: every known field fits
            assert settings.get(field) is None or ok(settings[field])


RECORD_FIELDS = ["name", "kind", "sources", "documents", "held_out_fraction", "train_chars"]
SOURCE = st.fixed_dictionaries(
    {},
    optional={
        "name": JSON | st.just("notes.txt"),
        "sha256": JSON | st.just("ab" * 32),
        "bytes": JSON | st.integers(0, 99),
        "python": JSON,
    },
)


@FUZZ
@given(
    record=st.dictionaries(
        st.sampled_from(RECORD_FIELDS),
        JSON | st.lists(SOURCE, max_size=2) | st.sampled_from(["python-docs", "shards", "x.txt"]),
        max_size=5,
    ),
    raw=st.one_of(st.none(), st.text(max_size=40), st.just("[" * 50 + "]" * 50)),
)
def test_training_text_metadata_is_checked_before_use(record, raw):
    """The training-text record an export carries, damaged any way: eval and optimize --int8 either find
    text by it or refuse with one line (a damaged record: ModelFileError naming the field)."""
    import json

    from mhe_edge.contract import KEY_TEXT
    from mhe_edge.errors import ModelFileError
    from mhe_edge.text.held_out import corpus_record_of_export
    from mhe_edge.text.quality import held_out_text

    metadata = {KEY_TEXT: raw if raw is not None else json.dumps(record)}
    try:
        checked = corpus_record_of_export(metadata, "m.onnx")
    except ModelFileError as exc:
        assert len(str(exc).splitlines()) == 1 and KEY_TEXT in str(exc)
        return
    assert isinstance(checked["name"], str)
    try:
        found = held_out_text(
            metadata, None, "m.onnx"
        )  # the builtin text, or a request for --eval-text
    except MheEdgeError as exc:
        assert len(str(exc).splitlines()) == 1
        return
    assert found is not None and found[0]
