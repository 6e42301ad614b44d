"""The one writing path (files/writing.py): checks before work, exclusive publish, folders replaced only
when mhe-edge wrote them, companions travel with their model, permissions follow the umask."""

import multiprocessing
import os
import stat

import pytest

from mhe_edge.errors import RequestError
from mhe_edge.files import FOLDER_MARKER, check_output, staged_output


def test_refusals_before_any_work(tmp_path):
    (tmp_path / "there.onnx").write_text("old")
    (tmp_path / "real.onnx").write_text("target of a link")
    os.symlink(tmp_path / "real.onnx", tmp_path / "link.onnx")
    for kwargs, fragment in [
        (dict(path=tmp_path / "missing" / "a.onnx"), "does not exist"),
        (dict(path=tmp_path / "a.txt", suffixes=(".onnx",)), "must end in .onnx"),
        (dict(path=tmp_path / "there.onnx"), "pass --force"),
        (dict(path=tmp_path / "link.onnx", force=True), "symbolic link"),
        (
            dict(path=tmp_path / "there.onnx", force=True, inputs=[tmp_path / "there.onnx"]),
            "overwrite an input",
        ),
        (dict(path=tmp_path, folder=True, force=True), "not written by mhe-edge"),
    ]:
        with pytest.raises(RequestError, match=fragment):
            check_output(**kwargs)
    assert (tmp_path / "real.onnx").read_text() == "target of a link"


def test_failure_leaves_nothing_and_force_replaces_companions(tmp_path):
    target = tmp_path / "m.onnx"
    with pytest.raises(ZeroDivisionError):
        with staged_output(target) as staged:
            staged.write_text("half")
            raise ZeroDivisionError
    assert list(tmp_path.iterdir()) == []
    with staged_output(target) as staged:
        staged.write_text("model")
        staged.with_name("m.onnx.data").write_text("weights")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx", "m.onnx.data"]
    with staged_output(target, force=True) as staged:
        staged.write_text("model without external data")
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "m.onnx"
    ]  # no stale data beside the new model


def test_permissions_follow_the_umask(tmp_path):
    old = os.umask(0o027)
    try:
        with staged_output(tmp_path / "a.json") as staged:
            staged.write_text("{}")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "a.json").stat().st_mode) == 0o640


def test_folders_are_replaced_only_when_mhe_edge_wrote_them(tmp_path):
    folder = tmp_path / "pkg"
    with staged_output(folder, folder=True) as staged:
        (staged / "model.onnx").write_text("v1")
    assert (folder / FOLDER_MARKER).is_file()
    (tmp_path / "unrelated.txt").write_text("keep")
    check_output(folder, folder=True, force=True)
    with staged_output(folder, force=True, folder=True) as staged:
        (staged / "model.onnx").write_text("v2")
    assert (folder / "model.onnx").read_text() == "v2" and (
        tmp_path / "unrelated.txt"
    ).read_text() == "keep"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pkg", "unrelated.txt"]


def test_an_interrupt_just_after_the_staging_folder_is_made_leaves_nothing(tmp_path, monkeypatch):
    """Ctrl-C lands between the mkdir and the line that would remember the folder (seen in CI: a signal
    sent the moment the staging folder appeared left it behind)."""
    real_mkdir = os.mkdir

    def mkdir_then_interrupted(path, *args, **kwargs):
        real_mkdir(path, *args, **kwargs)
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "mkdir", mkdir_then_interrupted)
    with pytest.raises(KeyboardInterrupt):
        with staged_output(tmp_path / "m.onnx"):
            pass
    assert list(tmp_path.iterdir()) == []


def test_an_interrupt_while_a_folder_is_replaced_puts_the_old_one_back(tmp_path, monkeypatch):
    folder = tmp_path / "pkg"
    with staged_output(folder, folder=True) as staged:
        (staged / "model.onnx").write_text("v1")
    real_rename, renames = os.rename, []

    def rename_interrupted_on_the_second(source, destination):
        renames.append(destination)
        if len(renames) == 2:  # the old folder is retired, the new one not yet in place
            raise KeyboardInterrupt
        real_rename(source, destination)

    monkeypatch.setattr(os, "rename", rename_interrupted_on_the_second)
    with pytest.raises(KeyboardInterrupt):
        with staged_output(folder, force=True, folder=True) as staged:
            (staged / "model.onnx").write_text("v2")
    assert len(renames) == 3  # retire, (interrupted) publish, put back
    assert (folder / "model.onnx").read_text() == "v1"
    assert [p.name for p in tmp_path.iterdir()] == ["pkg"]


def _writer(path, barrier, results):
    barrier.wait()
    try:
        with staged_output(path) as staged:
            staged.write_text(f"written by {os.getpid()}\n" * 1000)
        results.put("won")
    except RequestError:
        results.put("refused")


def test_two_writers_one_wins_the_other_refuses(tmp_path):
    context = multiprocessing.get_context("fork")
    barrier, results = context.Barrier(2), context.Queue()
    writers = [
        context.Process(target=_writer, args=(tmp_path / "out.onnx", barrier, results))
        for _ in range(2)
    ]
    for w in writers:
        w.start()
    for w in writers:
        w.join(30)
    assert sorted(results.get(timeout=5) for _ in writers) == ["refused", "won"]
    text = (tmp_path / "out.onnx").read_text()
    assert (
        len(set(text.splitlines())) == 1 and len(text.splitlines()) == 1000
    )  # whole, from one writer
    assert [p.name for p in tmp_path.iterdir()] == ["out.onnx"]


def test_names_up_to_the_file_system_limit(tmp_path):
    long_name = "m" * 250 + ".onnx"  # 255 bytes: NAME_MAX on Linux
    with staged_output(check_output(tmp_path / long_name, suffixes=(".onnx",))) as staged:
        staged.write_text("model")
    assert (tmp_path / long_name).read_text() == "model" and len(list(tmp_path.iterdir())) == 1


def test_metadata_is_printed_literally(tmp_path, cli):
    """ANSI and OSC-8 sequences or rich markup in a file's metadata reach the terminal escaped, not obeyed."""
    import json

    import onnx
    from passes_helpers import exported

    _, path = exported(tmp_path, attention="mhe-add")
    proto = onnx.load(path)
    entry = next(p for p in proto.metadata_props if p.key == "mhe_edge.graph")
    entry.value = "export\x1b[31m[bold]\x1b]8;;http://example.invalid\x07link"
    onnx.save(proto, tmp_path / "odd.onnx")
    shown = cli("inspect", tmp_path / "odd.onnx")
    assert shown.code == 0 and "\x1b" not in shown.stdout and "\\x1b[31m[bold]" in shown.stdout
    as_json = json.loads(cli("inspect", tmp_path / "odd.onnx", "--json").stdout)
    assert (
        as_json["graph"] == entry.value
    )  # JSON carries the value exactly (escaped by the encoder)
