"""Checkpoints round-trip, and every bad file is refused with one line, a non-zero exit, and no code run."""

import json
import os
import pickle
import re
import zipfile

import pytest
import torch
from conftest import CodeCarrier, tiny_model
from safetensors.torch import save_file

from mhe_edge import load_model, save_checkpoint
from mhe_edge.errors import CheckpointError
from mhe_edge.models.checkpoint import FORMAT


@pytest.mark.parametrize("suffix", [".pt", ".safetensors"])
@pytest.mark.parametrize(
    "arch,attention", [("decoder", "mhe-add"), ("encoder", "mhe-mul"), ("decoder", "gqa")]
)
def test_checkpoints_round_trip(tmp_path, suffix, arch, attention):
    model = tiny_model(arch=arch, attention=attention, seed=7)
    path = save_checkpoint(model, tmp_path / f"m{suffix}")
    loaded = load_model(path)
    assert loaded.config == model.config
    ids = torch.randint(0, model.config.vocab_size, (2, 6))
    with torch.no_grad():
        a, b = model(ids), loaded(ids)
    a, b = (a[0], b[0]) if arch == "decoder" else (a, b)
    assert torch.equal(a, b)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")], (
        "temporary file left behind"
    )


def _good_payload(model):
    return {"format": FORMAT, "config": model.config.to_dict(), "state_dict": model.state_dict()}


def _bad_files(tmp_path):
    """(file name, writer, expected message fragment) for every kind of bad checkpoint."""
    model = tiny_model(attention="mhe-mul")
    marker = tmp_path / "code_ran"
    good = tmp_path / "good.pt"
    save_checkpoint(model, good)
    good_st = tmp_path / "good.safetensors"
    save_checkpoint(model, good_st)

    def torch_save(obj):
        return lambda p: torch.save(obj, p)

    def truncated(src, keep):
        return lambda p: p.write_bytes(src.read_bytes()[:keep])

    state = model.state_dict()
    missing = {k: v for k, v in state.items() if k != "blocks.0.attn.q_head_embeddings"}
    reshaped = dict(state, **{"blocks.1.attn.k_head_embeddings": torch.zeros(5, 12)})
    cfg_json = json.dumps(model.config.to_dict())
    return marker, [
        ("text.pt", lambda p: p.write_text("hello, not a model\n"), "not an mhe-edge checkpoint"),
        ("empty.pt", lambda p: p.write_bytes(b""), "is empty"),
        ("random.pt", lambda p: p.write_bytes(os.urandom(4096)), "not"),
        ("code_top.pt", torch_save(CodeCarrier(marker)), "refuses"),
        (
            "code_nested.pt",
            torch_save({**_good_payload(model), "extra": [{"x": CodeCarrier(marker)}]}),
            "refuses",
        ),
        (
            "code_raw_pickle.pt",
            lambda p: p.write_bytes(pickle.dumps(CodeCarrier(marker))),
            "not an mhe-edge checkpoint",
        ),
        ("truncated.pt", truncated(good, 5000), "not a readable checkpoint"),
        ("truncated.safetensors", truncated(good_st, 5000), "not a readable safetensors"),
        (
            "other_program.pt",
            torch_save({"model": state, "epoch": 3}),
            "not an mhe-edge checkpoint",
        ),
        (
            "missing_key.pt",
            torch_save({**_good_payload(model), "state_dict": missing}),
            "lacks 1 weight",
        ),
        (
            "extra_key.pt",
            torch_save({**_good_payload(model), "state_dict": dict(state, spare=torch.zeros(1))}),
            "does not",
        ),
        (
            "bad_shape.pt",
            torch_save({**_good_payload(model), "state_dict": reshaped}),
            "has shape (5, 12)",
        ),
        (
            "bad_config.pt",
            torch_save(
                {**_good_payload(model), "config": {**model.config.to_dict(), "arch": "rnn"}}
            ),
            "invalid model config",
        ),
        (
            "plain.safetensors",
            lambda p: save_file({"w": torch.zeros(2)}, str(p)),
            "not an mhe-edge checkpoint",
        ),
        (
            "bad_shape.safetensors",
            lambda p: save_file(reshaped, str(p), metadata={"format": FORMAT, "config": cfg_json}),
            "has shape",
        ),
        (
            "int_weights.pt",
            torch_save(
                {**_good_payload(model), "state_dict": {k: v.long() for k, v in state.items()}}
            ),
            "not a floating-point",
        ),
    ]


def test_every_bad_checkpoint_is_refused_cleanly(tmp_path, cli):
    marker, cases = _bad_files(tmp_path)
    assert len(cases) >= 15
    for name, write, fragment in cases:
        path = tmp_path / name
        write(path)
        with pytest.raises(CheckpointError, match=re.escape(fragment)):
            load_model(path)
        result = cli("inspect", path)
        assert result.code == CheckpointError.exit_code, (name, result)
        assert "Traceback" not in result.stderr and fragment in result.stderr, (name, result.stderr)
        assert len(result.stderr.strip().splitlines()) == 1, (name, result.stderr)
        assert not marker.exists(), f"{name}: the pickle's code ran"


def test_code_carrying_pickle_really_would_run(tmp_path):
    """Guards the test above: unpickling CodeCarrier unsafely does create the marker."""
    marker = tmp_path / "ran"
    pickle.loads(pickle.dumps(CodeCarrier(marker)))
    assert marker.exists()


def test_safe_load_of_a_zip_that_is_not_torch(tmp_path):
    path = tmp_path / "archive.pt"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("readme.txt", "not torch")
    with pytest.raises(CheckpointError):
        load_model(path)
