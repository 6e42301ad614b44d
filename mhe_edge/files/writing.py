"""The one writing path for every output mhe-edge makes: files (ONNX and its external data, .ort, checkpoints,
traces, plots, JSON) and folders (packages, model folders).

1. `check_output` runs before any expensive work: the folder exists and is writable, the suffix is one the
   command writes, the path is not an input of the same command, not a symlink, and not there already
   (unless `force`).
2. `staged_output` yields a path inside a private staging folder beside the target; the caller writes there.
3. On success the staged file (and its companions, e.g. `model.onnx.data`) is published by a rename on the
   same file system: readers see the old output or the new one, never half of one. Without `force` the
   publish is an exclusive link, so of two writers racing for one path one wins and the other is refused.
   On any error, Ctrl-C, SIGTERM or SIGHUP (the CLI turns those into exceptions) the staging folder goes.
Published outputs get the permissions the umask gives a new file, not the staging file's private 0600.
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
import shutil
from collections.abc import Iterable, Iterator
from pathlib import Path

from mhe_edge.errors import OutputError, RequestError

FOLDER_MARKER = (
    ".mhe-edge"  # inside every folder mhe-edge writes; --force replaces only such folders
)
COMPANIONS = (".data",)  # files that travel with an output: MODEL.onnx.data


def check_output(
    path: str | os.PathLike,
    *,
    force: bool = False,
    suffixes: Iterable[str] = (),
    inputs: Iterable[str | os.PathLike] = (),
    folder: bool = False,
) -> Path:
    """The checked destination, or a RequestError naming what is wrong with it."""
    path = Path(path)
    parent = path.parent
    suffixes = tuple(suffixes)
    if suffixes and path.suffix not in suffixes:
        raise RequestError(f"output must end in {' or '.join(suffixes)}, not {path.name!r}")
    if not parent.is_dir():
        raise RequestError(f"output folder {str(parent)!r} does not exist")
    if len(os.fsencode(path.name)) > _name_max(parent):
        raise RequestError(
            f"output name {path.name[:40]!r}... is longer than this file system allows"
        )
    if not os.access(parent, os.W_OK | os.X_OK):
        raise RequestError(f"output folder {str(parent)!r} is not writable")
    if path.is_symlink():
        raise RequestError(f"{str(path)!r} is a symbolic link; mhe-edge never writes through one")
    destination = path.resolve()
    companions = [] if folder else [c.resolve() for c in _companions(path)]
    for source in inputs:
        source_path = Path(source).resolve()
        if (
            destination == source_path
            or destination in source_path.parents
            or source_path in companions
        ):
            raise RequestError(
                f"output {str(path)!r} would overwrite an input of this command (or its data); choose another path"
            )
    if folder:
        if path.exists() and not path.is_dir():
            raise RequestError(f"{str(path)!r} exists and is not a folder")
        if path.is_dir():
            if not force:
                raise RequestError(f"{str(path)!r} exists; pass --force to replace it")
            if not (path / FOLDER_MARKER).is_file():
                raise RequestError(
                    f"{str(path)!r} was not written by mhe-edge (no {FOLDER_MARKER} inside); refusing to replace it"
                )
    else:
        if path.is_dir():
            raise RequestError(f"output path {str(path)!r} is a folder")
        if path.exists() and not force:
            raise RequestError(f"{str(path)!r} exists; pass --force to overwrite it")
        for companion in _companions(path):
            if companion.is_symlink() or (companion.exists() and not force):
                raise RequestError(
                    f"{str(companion)!r} exists beside the output; pass --force to replace both"
                )
    return path


@contextlib.contextmanager
def staged_output(
    target: str | os.PathLike, *, force: bool = False, folder: bool = False
) -> Iterator[Path]:
    """Yield a staging path for `target` (a file path, or an existing empty folder when `folder`); publish
    it on success, delete everything staged otherwise. `target` should have passed `check_output`."""
    target = Path(target)
    with scratch_folder(target.parent, f".{target.name[:80]}.", ".staging") as stage:
        staged = stage / target.name
        if folder:
            staged.mkdir()
        yield staged
        try:
            if folder:
                (staged / FOLDER_MARKER).write_text(
                    "written by mhe-edge; `--force` may replace this folder\n"
                )
                _publish_folder(staged, target, force)
            else:
                _publish_file(staged, target, force)
        except OSError as exc:
            if isinstance(exc, FileExistsError) or exc.errno in (errno.EEXIST, errno.ENOTEMPTY):
                raise RequestError(
                    f"{str(target)!r} appeared while this command ran (another writer?); nothing was written"
                ) from exc
            raise OutputError(
                f"cannot write {target.name}: {exc.strerror or exc}; nothing was written"
            ) from exc


@contextlib.contextmanager
def scratch_folder(parent: Path, prefix: str, suffix: str) -> Iterator[Path]:
    """A new private folder in `parent`, removed with all it holds however the block ends.

    Its name is held before the folder exists, so a Ctrl-C at any instant (even between the mkdir and
    the assignment, where `tempfile.mkdtemp` would leave the folder behind) cannot strand it. A name
    another writer already took is never removed."""
    path: Path | None = None
    try:
        while path is None:
            path = parent / f"{prefix}{secrets.token_hex(6)}{suffix}"
            try:
                os.mkdir(path, 0o700)
            except FileExistsError:
                path = None
        yield path
    finally:
        if path is not None:
            shutil.rmtree(path, ignore_errors=True)


def _publish_file(staged: Path, target: Path, force: bool) -> None:
    for old in _companions(
        target
    ):  # companions first: a reader that sees the new model finds its data
        companion = staged.with_name(old.name)
        if companion.exists():
            _apply_umask(companion)
            _move(companion, old, force)
        elif force and old.is_file() and not old.is_symlink():
            old.unlink()  # a stale companion of the output being replaced
    _apply_umask(staged)
    _move(staged, target, force)


def _move(source: Path, target: Path, force: bool) -> None:
    if target.is_symlink():
        raise RequestError(f"{str(target)!r} is a symbolic link; mhe-edge never writes through one")
    if force:
        os.replace(source, target)
        return
    os.link(source, target)  # exclusive: fails with EEXIST if another writer got there first
    source.unlink()


def _publish_folder(staged: Path, target: Path, force: bool) -> None:
    for path in (staged, *staged.rglob("*")):
        _apply_umask(path)
    if not target.exists():
        os.rename(staged, target)  # fails with ENOTEMPTY/EEXIST if a folder appeared meanwhile
        return
    if not force or not (target / FOLDER_MARKER).is_file():
        raise FileExistsError(errno.EEXIST, "exists", str(target))
    with scratch_folder(target.parent, f".{target.name[:80]}.", ".old") as retired:
        moved = retired / target.name
        try:
            os.rename(target, moved)
            os.rename(staged, target)
        except BaseException:
            # Ctrl-C or an error between the two renames: the old folder goes back
            if moved.exists() and not target.exists():
                os.rename(moved, target)
            raise


def _companions(path: Path) -> list[Path]:
    """The companion files an output may have (MODEL.onnx.data), leaving out names the file system could not
    hold: no such file can exist."""
    names = (path.name + suffix for suffix in COMPANIONS)
    return [
        path.with_name(name) for name in names if len(os.fsencode(name)) <= _name_max(path.parent)
    ]


def _name_max(folder: Path) -> int:
    try:
        return os.pathconf(folder, "PC_NAME_MAX")
    except (OSError, ValueError):
        return 255


def _apply_umask(path: Path) -> None:
    mode = 0o777 if path.is_dir() else 0o666
    os.chmod(path, mode & ~_umask())


def _umask() -> int:
    current = os.umask(0o022)
    os.umask(current)
    return current
