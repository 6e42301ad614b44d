"""Write files so that they appear whole or not at all: write beside the target, then rename."""
from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import Iterator

from mhe_edge.errors import RequestError


def check_output_path(path: str | os.PathLike, force: bool = False) -> Path:
    """Refuse an output whose folder is missing, or that exists (unless `force`)."""
    path = Path(path)
    if not path.parent.is_dir():
        raise RequestError(f"output folder {str(path.parent)!r} does not exist")
    if path.is_dir():
        raise RequestError(f"output path {str(path)!r} is a folder")
    if path.exists() and not force:
        raise RequestError(f"{str(path)!r} exists; pass --force to overwrite it")
    return path


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike, suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path in the target's folder; on success rename it over `path`, else delete it.

    An interrupt (Ctrl-C) or a full disk leaves the old file, if any, untouched and no partial file behind.
    """
    path = Path(path)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix + ".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise
