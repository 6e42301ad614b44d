"""Named, timed steps for long library calls; a CLI passes `on_step` to show progress."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator


def timed_steps(seconds: dict[str, float], on_step: Callable[[str], None] | None = None):
    """A `step(name)` context manager: announces the step, then records its wall time in `seconds`."""

    @contextlib.contextmanager
    def step(name: str) -> Iterator[None]:
        if on_step:
            on_step(name)
        start = time.perf_counter()
        yield
        seconds[name] = round(time.perf_counter() - start, 3)

    return step
