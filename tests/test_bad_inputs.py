"""Reliability: every bad input is refused with its exit code, a one-line message naming the problem, no
traceback, no code run, and no file left behind (distinct cases through the real CLI)."""

import os
import pickle
from pathlib import Path

import onnx
import pytest
import torch
from conftest import CodeCarrier, tiny_model

from mhe_edge import save_checkpoint
from mhe_edge.exporters import export
from mhe_edge.models.checkpoint import FORMAT

MARKER = "code_ran"


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    """Valid inputs to break: a checkpoint, a decoder export, an encoder export, one with external data."""
    folder = tmp_path_factory.mktemp("assets")
    model = tiny_model(attention="mhe-mul")
    save_checkpoint(model, folder / "good.pt")
    save_checkpoint(model, folder / "good.safetensors")
    export(model, folder / "good.onnx")
    export(tiny_model(arch="encoder", attention="mhe-add"), folder / "encoder.onnx")
    export(model, folder / "external.onnx", external_data=True)
    return folder, model


def _copy(assets, name, to):
    to.write_bytes((assets[0] / name).read_bytes())
    return to


def _external_data_at(assets, d, location, symlink_to=None):
    """A copy of the external-data export whose tensors name `location` (made a symlink when asked)."""
    (d / "sub").mkdir()
    proto = onnx.load(assets[0] / "external.onnx", load_external_data=False)
    for tensor in proto.graph.initializer:
        for entry in tensor.external_data:
            if entry.key == "location":
                entry.value = location
    onnx.save(proto, d / "sub" / "evil.onnx")
    if symlink_to:
        os.symlink(symlink_to, d / "sub" / location)
    return d / "sub" / "evil.onnx"


def _huge_tensor(assets, d):
    proto = onnx.load(assets[0] / "good.onnx")
    tensor = max(proto.graph.initializer, key=lambda t: len(t.raw_data))
    tensor.dims[:] = [100_000, 100_000]
    onnx.save(proto, d / "huge.onnx")
    return d / "huge.onnx"


def _plain_onnx(d):
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])],
    )
    onnx.save(helper.make_model(graph), d / "plain.onnx")
    return d / "plain.onnx"


def _torch_file(d, name, obj):
    torch.save(obj, d / name)
    return d / name


def _payload(assets, **changes):
    model = assets[1]
    return {
        "format": FORMAT,
        "config": model.config.to_dict(),
        "state_dict": model.state_dict(),
        **changes,
    }


# (id, setup(assets, tmp) -> argv, exit code, fragment of the message)
CASES = [
    (
        "text-checkpoint",
        lambda a, d: ["inspect", _write(d / "notes.pt", b"hello\n")],
        3,
        "not an mhe-edge checkpoint",
    ),
    ("empty-checkpoint", lambda a, d: ["inspect", _write(d / "empty.pt", b"")], 3, "is empty"),
    (
        "random-bytes-checkpoint",
        lambda a, d: ["inspect", _write(d / "noise.safetensors", os.urandom(3000))],
        3,
        "not",
    ),
    (
        "pickle-code-top-level",
        lambda a, d: ["inspect", _torch_file(d, "evil.pt", CodeCarrier(d / MARKER))],
        3,
        "refuses",
    ),
    (
        "pickle-code-nested",
        lambda a, d: [
            "export",
            _torch_file(d, "evil2.pt", _payload(a, extra={"x": [CodeCarrier(d / MARKER)]})),
        ],
        3,
        "refuses",
    ),
    (
        "raw-pickle-with-code",
        lambda a, d: ["inspect", _write(d / "raw.pt", pickle.dumps(CodeCarrier(d / MARKER)))],
        3,
        "not an mhe-edge checkpoint",
    ),
    (
        "truncated-pt",
        lambda a, d: ["export", _write(d / "cut.pt", (a[0] / "good.pt").read_bytes()[:4000])],
        3,
        "truncated",
    ),
    (
        "truncated-safetensors",
        lambda a, d: ["inspect", _write(d / "cut.safetensors", _half(a[0] / "good.safetensors"))],
        3,
        "not a readable safetensors",
    ),
    (
        "other-programs-checkpoint",
        lambda a, d: ["inspect", _torch_file(d, "other.pt", {"model": a[1].state_dict()})],
        3,
        "not an mhe-edge checkpoint",
    ),
    (
        "state-dict-missing-key",
        lambda a, d: [
            "export",
            _torch_file(
                d,
                "miss.pt",
                _payload(
                    a,
                    state_dict={k: v for k, v in a[1].state_dict().items() if "out_proj" not in k},
                ),
            ),
        ],
        3,
        "lacks",
    ),
    (
        "state-dict-wrong-shape",
        lambda a, d: [
            "inspect",
            _torch_file(
                d,
                "shape.pt",
                _payload(a, state_dict={**a[1].state_dict(), "lm_head.weight": torch.zeros(3, 3)}),
            ),
        ],
        3,
        "has shape (3, 3)",
    ),
    (
        "config-that-does-not-divide",
        lambda a, d: [
            "inspect",
            _torch_file(
                d,
                "cfg.pt",
                _payload(a, config={**a[1].config.to_dict(), "head_dim": None, "d_model": 50}),
            ),
        ],
        3,
        "not divisible",
    ),
    (
        "onnx-random-bytes",
        lambda a, d: ["inspect", _write(d / "noise.onnx", os.urandom(2000))],
        4,
        "not a readable ONNX file",
    ),
    (
        "onnx-empty",
        lambda a, d: ["optimize", _write(d / "empty.onnx", b"")],
        4,
        "not an mhe-edge export",
    ),
    (
        "onnx-truncated",
        lambda a, d: [
            "generate",
            _write(d / "cut.onnx", (a[0] / "good.onnx").read_bytes()[:5000]),
            "--prompt",
            "1",
        ],
        4,
        "not",
    ),
    ("onnx-not-mhe-edge", lambda a, d: ["profile", _plain_onnx(d)], 4, "not an mhe-edge export"),
    (
        "onnx-external-data-outside-folder",
        lambda a, d: ["to-ort", _external_data_at(a, d, "../../etc/passwd")],
        4,
        "outside its folder",
    ),
    (
        "onnx-external-data-symlink-outside",
        lambda a, d: [
            "inspect",
            _external_data_at(a, d, "weights.data", symlink_to="/etc/hostname"),
        ],
        4,
        "outside its folder",
    ),
    ("onnx-huge-declared-tensor", lambda a, d: ["inspect", _huge_tensor(a, d)], 4, "declares"),
    (
        "compare-non-mhe-edge-file",
        lambda a, d: ["compare", _plain_onnx(d), "--seq-lens", "4"],
        4,
        "not an mhe-edge export",
    ),
    (
        "package-an-encoder",
        lambda a, d: ["package", a[0] / "encoder.onnx", "-o", d / "pkg"],
        2,
        "is an encoder",
    ),
    (
        "unknown-provider",
        lambda a, d: ["generate", a[0] / "good.onnx", "--prompt", "1", "--provider", "npu"],
        2,
        "--provider must be one of cpu, cuda, not 'npu'",
    ),
    (
        "cuda-where-there-is-none",
        lambda a, d: ["profile", a[0] / "good.onnx", "--provider", "cuda"],
        7,
        "CUDAExecutionProvider",
    ),
    (
        "batch-zero",
        lambda a, d: ["profile", a[0] / "good.onnx", "--batch", "0"],
        2,
        "--batch must be 1 to 4,096, not 0",
    ),
    (
        "seq-len-negative",
        lambda a, d: ["profile", a[0] / "good.onnx", "--seq-len", "-5"],
        2,
        "--seq-len must be 1 to 1,048,576, not -5",
    ),
    (
        "new-tokens-negative",
        lambda a, d: ["profile", a[0] / "good.onnx", "--new-tokens", "-1"],
        2,
        "--new-tokens must be 0 to 1,000,000, not -1",
    ),
    (
        "token-outside-vocab",
        lambda a, d: ["generate", a[0] / "good.onnx", "--prompt", "1,97"],
        2,
        "outside the vocabulary",
    ),
    (
        "token-negative",
        lambda a, d: ["generate", a[0] / "good.onnx", "--prompt", "-4"],
        2,
        "outside the vocabulary",
    ),
    (
        "prompt-not-integers",
        lambda a, d: ["generate", a[0] / "good.onnx", "--prompt", "1.5,2"],
        2,
        "comma-separated token ids",
    ),
    (
        "generation-past-max-seq-len",
        lambda a, d: ["generate", a[0] / "good.onnx", "--prompt", "1,2", "--max-new-tokens", "63"],
        2,
        "exceed the model's max_seq_len",
    ),
    (
        "heads-do-not-divide-width",
        lambda a, d: ["init", d / "m.pt", "--d-model", "50", "--heads", "4"],
        2,
        "not divisible by n_heads",
    ),
    (
        "kv-heads-do-not-divide-heads",
        lambda a, d: ["init", d / "m.pt", "--attention", "gqa", "--heads", "4", "--kv-heads", "3"],
        2,
        "not divisible by n_kv_heads",
    ),
    (
        "output-in-missing-folder",
        lambda a, d: ["export", a[0] / "good.pt", "-o", d / "nope" / "m.onnx"],
        2,
        "does not exist",
    ),
    (
        "output-over-existing-file",
        lambda a, d: ["init", _write(d / "keep.pt", b"precious")],
        2,
        "pass --force",
    ),
    (
        "export-over-existing-file",
        lambda a, d: ["export", a[0] / "good.pt", "-o", _write(d / "keep.onnx", b"precious")],
        2,
        "pass --force",
    ),
    (
        "opset-too-low",
        lambda a, d: ["export", a[0] / "good.pt", "-o", d / "m.onnx", "--opset", "12"],
        2,
        "--opset must be 23 to 25, not 12",
    ),
    (
        "fp16-and-int8",
        lambda a, d: ["optimize", a[0] / "good.onnx", "-o", d / "o.onnx", "--fp16", "--int8"],
        2,
        "choose one of --fp16, --int8 and --int4",
    ),
    (
        "inspect-unknown-suffix",
        lambda a, d: ["inspect", _write(d / "model.bin", b"x")],
        2,
        "inspect takes",
    ),
]


# Outputs: nothing lost, nothing written through a link or onto an input.
CASES += [
    (
        "trace-onto-the-input",
        lambda a, d: [
            "profile",
            _copy(a, "good.onnx", d / "m.onnx"),
            "--trace",
            d / "m.onnx",
            "--force",
        ],
        2,
        "must end in .json",
    ),
    (
        "trace-over-a-file",
        lambda a, d: ["profile", a[0] / "good.onnx", "--trace", _write(d / "t.json", b"keep")],
        2,
        "pass --force",
    ),
    (
        "trace-through-a-symlink",
        lambda a, d: [
            "profile",
            a[0] / "good.onnx",
            "--trace",
            _link(d / "t.json", _write(d / "target.json", b"keep")),
            "--force",
        ],
        2,
        "symbolic link",
    ),
    (
        "plot-bad-extension",
        lambda a, d: ["compare", a[0] / "good.onnx", "--seq-lens", "4", "--plot", d / "p.txt"],
        2,
        "must end in .png",
    ),
    (
        "plot-missing-folder",
        lambda a, d: [
            "compare",
            a[0] / "good.onnx",
            "--seq-lens",
            "4",
            "--plot",
            d / "no" / "p.png",
        ],
        2,
        "does not exist",
    ),
    (
        "package-force-over-a-users-folder",
        lambda a, d: [
            "package",
            a[0] / "good.onnx",
            "-o",
            _folder_with_files(d / "mine"),
            "--force",
        ],
        2,
        "not written by mhe-edge",
    ),
    (
        "package-force-over-the-current-folder",
        lambda a, d: [
            "package",
            a[0] / "good.onnx",
            "-o",
            _write(d / "x.txt", b"keep").parent,
            "--force",
        ],
        2,
        "not written by mhe-edge",
    ),
    (
        "export-over-a-data-file",
        lambda a, d: (
            ["export", a[0] / "good.pt", "-o", d / "m.onnx", "--external-data", "--json"]
            if _write(d / "m.onnx.data", b"keep")
            else []
        ),
        2,
        "exists beside the output",
    ),
    (
        "optimize-onto-its-input",
        lambda a, d: [
            "optimize",
            _copy(a, "good.onnx", d / "m.onnx"),
            "-o",
            d / "m.onnx",
            "--force",
        ],
        2,
        "overwrite an input",
    ),
    (
        "init-through-a-symlink",
        lambda a, d: ["init", _link(d / "link.pt", _write(d / "real.pt", b"keep")), "--force"],
        2,
        "symbolic link",
    ),
    (
        "to-ort-external-data",
        lambda a, d: ["to-ort", _copy_external(a, d), "-o", d / "m.ort"],
        2,
        "external data",
    ),
]
# Found by trying the CLI as a new user and an attacker would.
CASES += [
    (
        "optimize-force-onto-the-inputs-data",
        lambda a, d: ["optimize", _renamed_external(a, d), "-o", d / "external.onnx", "--force"],
        2,
        "overwrite an input",
    ),
    (
        "export-optimize-output-exists",
        lambda a, d: (
            ["export", a[0] / "good.pt", "-o", d / "e.onnx", "--optimize"]
            if _write(d / "e.opt.onnx", b"keep")
            else []
        ),
        2,
        "exists",
    ),
    (
        "export-target-without-optimize",
        lambda a, d: ["export", a[0] / "good.pt", "-o", d / "t.onnx", "--target", "ort"],
        2,
        "add --optimize",
    ),
    (
        "folder-config-linked-to-a-fifo",
        lambda a, d: ["inspect", _folder_with_linked_config(a, d)],
        3,
        "config.json is not a plain file",
    ),
    (
        "folder-nan-named-as-the-folder-names-it",
        lambda a, d: ["export", _folder_with_nan(d)],
        3,
        "model.norm.weight holds NaN",
    ),
    (
        "folder-tensor-of-the-wrong-shape",
        lambda a, d: ["export", _folder_with_nan(d, shape_only=True)],
        3,
        "model.embed_tokens.weight has shape (999, 64)",
    ),
    (
        "compare-huge-seq-len",
        lambda a, d: ["compare", a[0] / "good.onnx", "--seq-lens", "99999999999999999999"],
        2,
        "--seq-len must be 1 to 1,048,576",
    ),
    (
        "compare-seq-len-beyond-the-preset",
        lambda a, d: ["compare", "--preset", "tiny", "--attention", "mha", "--seq-lens", "200"],
        2,
        "exceed the tiny preset",
    ),
]
# Inputs: bounded before anything is allocated, checked against the file and the graph.
CASES += [
    ("onnx-sparse-initializer", lambda a, d: ["inspect", _sparse(a, d)], 4, "sparse"),
    (
        "onnx-metadata-not-json",
        lambda a, d: ["generate", _metadata(a, d, "mhe_edge.io", "{not json"), "--prompt", "1"],
        4,
        "not JSON",
    ),
    (
        "onnx-metadata-deeply-nested",
        lambda a, d: ["profile", _metadata(a, d, "mhe_edge.config", "[" * 5000 + "]" * 5000)],
        4,
        "nests",
    ),
    (
        "onnx-metadata-lies-about-layers",
        lambda a, d: ["generate", _config_lie(a, d, n_layers=3), "--prompt", "1"],
        4,
        "do not match its metadata",
    ),
    (
        "onnx-metadata-lies-about-head-size",
        lambda a, d: ["optimize", _config_lie(a, d, head_dim=16, d_model=64), "-o", d / "o.onnx"],
        4,
        "by its metadata",
    ),
    (
        "onnx-metadata-lies-about-vocab",
        lambda a, d: ["to-ort", _config_lie(a, d, vocab_size=98), "-o", d / "o.ort"],
        4,
        "by its metadata",
    ),
    (
        "onnx-metadata-lies-about-arch",
        lambda a, d: ["package", _config_lie(a, d, arch="encoder"), "-o", d / "pkg"],
        4,
        "do not match its metadata",
    ),
    (
        "onnx-non-finite-weights",
        lambda a, d: ["generate", _nan_onnx(a, d), "--prompt", "1,2"],
        4,
        "holds NaN",
    ),
    ("pt-compressed-records", lambda a, d: ["inspect", _deflated(a, d)], 3, "compressed"),
    (
        "pt-stride-zero-tensor",
        lambda a, d: [
            "export",
            _torch_file(
                d,
                "expand.pt",
                _payload(
                    a,
                    state_dict={
                        **a[1].state_dict(),
                        "lm_head.weight": torch.zeros(1).expand(97, 48),
                    },
                ),
            ),
        ],
        3,
        "view or expansion",
    ),
    (
        "pt-view-into-larger-storage",
        lambda a, d: [
            "inspect",
            _torch_file(
                d,
                "view.pt",
                _payload(
                    a, state_dict={**a[1].state_dict(), "lm_head.weight": torch.zeros(200, 48)[:97]}
                ),
            ),
        ],
        3,
        "view or expansion",
    ),
    (
        "pt-config-beyond-limits",
        lambda a, d: [
            "inspect",
            _torch_file(
                d, "deep.pt", _payload(a, config={**a[1].config.to_dict(), "n_layers": 10**8})
            ),
        ],
        3,
        "beyond mhe-edge's limit",
    ),
    (
        "pt-config-bigger-than-file",
        lambda a, d: [
            "export",
            _torch_file(
                d,
                "big.pt",
                _payload(
                    a,
                    config={
                        **a[1].config.to_dict(),
                        "n_layers": 1000,
                        "d_model": 4096,
                        "head_dim": None,
                        "d_ff": 16384,
                    },
                ),
            ),
        ],
        3,
        "more than its",
    ),
    (
        "pt-non-finite-weights",
        lambda a, d: [
            "export",
            _torch_file(
                d,
                "nan.pt",
                _payload(
                    a,
                    state_dict={
                        **a[1].state_dict(),
                        "ln_f.weight": torch.full((48,), float("nan")),
                    },
                ),
            ),
        ],
        3,
        "ln_f.weight holds NaN",
    ),
    (
        "safetensors-non-finite-weights",
        lambda a, d: ["inspect", _nan_safetensors(a, d)],
        3,
        "holds NaN",
    ),
]
# Arguments: numbers bounded at the boundary, prompts parsed strictly, names printed literally.
CASES += [
    (
        "huge-d-model",
        lambda a, d: ["init", d / "m.pt", "--d-model", str(10**9)],
        2,
        "--d-model must be 1 to 65,536",
    ),
    (
        "huge-vocab",
        lambda a, d: ["init", d / "m.pt", "--vocab-size", str(10**12)],
        2,
        "--vocab-size must be 1 to 4,194,304",
    ),
    (
        "huge-seed",
        lambda a, d: ["init", d / "m.pt", "--seed", str(2**70)],
        2,
        "--seed must be 0 to 4,294,967,295",
    ),
    (
        "huge-threads",
        lambda a, d: ["generate", a[0] / "good.onnx", "--prompt", "1", "--threads", str(10**7)],
        2,
        "--threads must be 1 to 1,024",
    ),
    (
        "huge-token-id",
        lambda a, d: ["generate", a[0] / "good.onnx", "--prompt", "9" * 40],
        2,
        "outside any vocabulary",
    ),
    (
        "prompt-double-minus",
        lambda a, d: ["generate", a[0] / "good.onnx", "--prompt=--3"],
        2,
        "comma-separated token ids",
    ),
    (
        "markup-in-a-file-name",
        lambda a, d: ["inspect", _write(d / "[bold]x[red].pt", b"hello")],
        3,
        "[bold]x[red].pt",
    ),
    (
        "control-characters-in-a-file-name",
        lambda a, d: ["inspect", _write(d / "a\x1b[31mred.pt", b"hello")],
        3,
        "a\\x1b[31mred.pt",
    ),
    (
        "init-bad-suffix",
        lambda a, d: ["init", d / "m.ckpt"],
        2,
        "must be saved as .pt, .safetensors or a folder",
    ),
    (
        "compare-unknown-kind",
        lambda a, d: ["compare", "--preset", "tiny", "--attention", "mha,mla"],
        2,
        "attention must be one of",
    ),
    (
        "compare-unknown-provider",
        lambda a, d: ["compare", a[0] / "good.onnx", "--seq-lens", "4", "--provider", "tpu"],
        2,
        "--provider must be one of cpu, cuda, not 'tpu'",
    ),
]


def _renamed_external(assets, d):
    """An external-data model renamed after export: its data file is named after another model name."""
    _copy(assets, "external.onnx.data", d / "external.onnx.data")
    return _copy(assets, "external.onnx", d / "renamed.onnx")


def _folder_with_linked_config(assets, d):
    from mhe_edge import init_model

    folder = Path(init_model(d / "m", preset="tiny").path)
    os.mkfifo(d / "outside.json")  # reading it would block: it must be refused before any read
    (folder / "config.json").unlink()
    os.symlink(d / "outside.json", folder / "config.json")
    return folder


def _folder_with_nan(d, shape_only=False):
    """Our tiny-llama folder with a NaN in a weight, or (shape_only) one table a row short, found from the header."""
    from safetensors.torch import load_file, save_file

    from mhe_edge import init_model

    folder = Path(init_model(d / "m", preset="tiny-llama").path)
    state = load_file(folder / "model.safetensors")
    if shape_only:
        state["model.embed_tokens.weight"] = state["model.embed_tokens.weight"][:999].clone()
    else:
        state["model.norm.weight"][0] = float("nan")
    save_file(state, folder / "model.safetensors")
    return folder


def _link(link: Path, target: Path) -> Path:
    os.symlink(target, link)
    return link


def _folder_with_files(folder: Path) -> Path:
    folder.mkdir()
    (folder / "notes.txt").write_text("mine")
    return folder


def _copy_external(assets, d):
    _copy(assets, "external.onnx.data", d / "external.onnx.data")
    return _copy(assets, "external.onnx", d / "external.onnx")


def _sparse(assets, d, side=20_000):
    """A tiny file whose sparse initializer would densify to 1.6 GB."""
    from onnx import helper

    proto = onnx.load(assets[0] / "good.onnx")
    values = helper.make_tensor("big", onnx.TensorProto.FLOAT, [1], [1.0])
    indices = helper.make_tensor("big_idx", onnx.TensorProto.INT64, [1], [0])
    proto.graph.sparse_initializer.append(helper.make_sparse_tensor(values, indices, [side, side]))
    onnx.save(proto, d / "sparse.onnx")
    return d / "sparse.onnx"


def _metadata(assets, d, key, value):
    proto = onnx.load(assets[0] / "good.onnx")
    next(p for p in proto.metadata_props if p.key == key).value = value
    onnx.save(proto, d / "meta.onnx")
    return d / "meta.onnx"


def _config_lie(assets, d, **lies):
    import json

    config = {**assets[1].config.to_dict(), **lies}
    return _metadata(assets, d, "mhe_edge.config", json.dumps(config))


def _nan_onnx(assets, d):
    from onnx import numpy_helper

    proto = onnx.load(assets[0] / "good.onnx")
    tensor = next(t for t in proto.graph.initializer if len(t.dims) == 2)
    array = numpy_helper.to_array(tensor).copy()
    array[3, 5] = float("nan")
    tensor.CopyFrom(numpy_helper.from_array(array, tensor.name))
    onnx.save(proto, d / "nan.onnx")
    return d / "nan.onnx"


def _nan_safetensors(assets, d):
    model = tiny_model(attention="mhe-mul")
    with torch.no_grad():
        model.lm_head.weight[0, 0] = float("inf")
    save_checkpoint(model, d / "nan.safetensors")
    return d / "nan.safetensors"


def _deflated(assets, d):
    """The good checkpoint, its records recompressed: small on disk, any size once inflated."""
    import zipfile

    with (
        zipfile.ZipFile(assets[0] / "good.pt") as source,
        zipfile.ZipFile(d / "deflated.pt", "w", zipfile.ZIP_DEFLATED) as out,
    ):
        for entry in source.infolist():
            out.writestr(entry.filename, source.read(entry))
    return d / "deflated.pt"


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


@pytest.mark.parametrize("name,setup,code,fragment", CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_refused_cleanly(tmp_path, cli, assets, name, setup, code, fragment):
    argv = setup(assets, tmp_path)
    before = {p: p.read_bytes() if p.is_file() else None for p in tmp_path.rglob("*")}
    result = cli(*argv)
    assert result.code == code, (name, result)
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and fragment in errors[0], (name, result.stderr)
    assert "Traceback" not in result.stderr + result.stdout
    assert not (tmp_path / MARKER).exists(), f"{name}: a pickle's code ran"
    after = {p: p.read_bytes() if p.is_file() else None for p in tmp_path.rglob("*")}
    assert after == before, f"{name}: files were written or changed: {set(after) ^ set(before)}"


def test_debug_shows_the_traceback_with_its_root_cause(tmp_path):
    """--debug shows the whole chain: the one-line error and the library error that caused it."""
    import subprocess
    import sys

    path = _write(
        tmp_path / "cut.pt", b"PK\x03\x04" + b"\x00" * 40
    )  # a torch zip header, then nothing
    plain = subprocess.run(
        [sys.executable, "-m", "mhe_edge", "inspect", str(path)], capture_output=True, text=True
    )
    assert (
        plain.returncode == 3
        and "Traceback" not in plain.stderr
        and plain.stderr.startswith("error:")
    )
    debug = subprocess.run(
        [sys.executable, "-m", "mhe_edge", "--debug", "inspect", str(path)],
        capture_output=True,
        text=True,
    )
    assert debug.returncode != 0 and "Traceback" in debug.stderr
    assert (
        "CheckpointError" in debug.stderr and "direct cause" in debug.stderr
    )  # the root cause is not hidden


def _mhe_edge_process(*args):
    import subprocess
    import sys

    return subprocess.Popen(
        [sys.executable, "-m", "mhe_edge", *map(str, args)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_crafted_files_cost_no_memory(tmp_path, assets):
    """Files built to make a loader allocate gigabytes are refused first: the children's peak RSS stays low."""
    import resource

    crafted = [
        (
            ["generate", _sparse(assets, _fresh(tmp_path, "a"), side=30_000), "--prompt", "1"],
            4,
        ),  # 3.6 GB if densified
        (
            ["generate", _huge_tensor(assets, _fresh(tmp_path, "b")), "--prompt", "1"],
            4,
        ),  # 40 GB declared
        (
            ["export", _expanded_checkpoint(_fresh(tmp_path, "c"))],
            3,
        ),  # 4 GB of weights from 1-element storages
    ]
    for argv, code in crafted:
        process = _mhe_edge_process(*argv)
        _, stderr = process.communicate(timeout=120)
        assert (
            process.returncode == code and stderr.startswith("error:") and "Traceback" not in stderr
        ), (argv, stderr)
    peak_kib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    assert peak_kib < 1_200_000, f"a child peaked at {peak_kib / 2**20:.2f} GiB"


def test_two_concurrent_writers_one_wins_and_the_file_is_whole(tmp_path):
    target = tmp_path / "same.pt"
    processes = [
        _mhe_edge_process("init", target, "--seed", str(seed), "--json") for seed in (1, 2)
    ]
    results = [(p.wait(timeout=120), p.stdout.read(), p.stderr.read()) for p in processes]
    codes = sorted(code for code, _, _ in results)
    assert codes == [0, 2], results
    loser = next(err for code, _, err in results if code == 2)
    assert loser.startswith("error:") and ("exists" in loser or "appeared while" in loser)
    from mhe_edge import describe

    assert describe(target).stored_parameters > 0  # whole and loadable
    assert [p.name for p in tmp_path.iterdir()] == ["same.pt"]


def _expanded_checkpoint(folder):
    """A consistent config (vocab 2M x width 256) whose every tensor is a stride-0 view of one element:
    every shape check passes, and building the model would allocate about 4 GB."""
    from mhe_edge.config import ModelConfig
    from mhe_edge.models import build_model

    config = ModelConfig(n_layers=1, d_model=256, n_heads=4, vocab_size=2_000_000, max_seq_len=64)
    with torch.device("meta"):
        shapes = {k: v.shape for k, v in build_model(config).state_dict().items()}
    state = {k: torch.zeros(1).expand(shape) for k, shape in shapes.items()}
    return _torch_file(
        folder, "expanded.pt", {"format": FORMAT, "config": config.to_dict(), "state_dict": state}
    )


def _fresh(tmp_path, name):
    folder = tmp_path / name
    folder.mkdir()
    return folder


def _half(path: Path) -> bytes:
    data = path.read_bytes()
    return data[: len(data) // 2]


DAMAGED_TEXT_RECORDS = [
    ("{not json", "is not JSON"),
    ("[" * 40 + "]" * 40, "levels deep"),
    ('["python-docs"]', "not a JSON object"),
    ('{"name": 7}', "field name=7"),
    ('{"name": "x.txt", "sources": [{"name": "x.txt", "sha256": "zz"}]}', "sources[0].sha256"),
    ('{"name": "x.txt", "sources": "x.txt"}', "field sources="),
    ('{"name": "python-docs", "held_out_fraction": 3}', "held_out_fraction"),
]


def test_a_damaged_training_text_record_is_refused_naming_the_field(tmp_path, cli):
    from mhe_edge.contract import KEY_TEXT
    from mhe_edge.text.tokenizer import byte_tokenizer

    tokenizer = tmp_path / "tokenizer.json"
    byte_tokenizer().backend.save(str(tokenizer))
    export(tiny_model(vocab_size=257), tmp_path / "good.onnx", tokenizer=tokenizer)
    for record, fragment in DAMAGED_TEXT_RECORDS:
        proto = onnx.load(tmp_path / "good.onnx")
        proto.metadata_props.add(key=KEY_TEXT, value=record)
        onnx.save(proto, tmp_path / "m.onnx")
        optimize = ["optimize", tmp_path / "m.onnx", "-o", tmp_path / "o.onnx", "--int8"]
        for args in [["eval", tmp_path / "m.onnx"]] + [optimize] * (
            fragment == "sources[0].sha256"
        ):
            done = cli(*args)
            error = done.stderr.strip().splitlines()[-1]  # after optimize's progress lines
            assert done.code == 4 and fragment in error and KEY_TEXT in error, (
                args[0],
                done.stderr,
            )
            assert done.stderr.count("error") == 1 and "Traceback" not in done.stderr
    assert not (tmp_path / "o.onnx").exists()
