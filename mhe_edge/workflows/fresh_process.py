"""Profiling a model in a fresh (spawned) process, so its peak memory is its own: what `compare` and the
long-context benchmark measure with."""

from __future__ import annotations

import multiprocessing
from pathlib import Path
from typing import Any

from mhe_edge import errors
from mhe_edge.errors import MheEdgeError, first_line


def _profile_child(queue, path: str, options: dict[str, Any]) -> None:
    """Runs in a fresh (spawned) interpreter: its peak memory is this model's alone, with the heap set
    as `mhe-edge profile` sets it."""
    from mhe_edge.runtime.memory import return_large_blocks_to_the_os
    from mhe_edge.runtime.profiler import profile

    return_large_blocks_to_the_os()

    try:
        queue.put(("ok", profile(path, **options).to_dict()))
    except MheEdgeError as exc:
        queue.put((type(exc).__name__, str(exc)))
    except Exception as exc:  # a crash in one model's run becomes one line in the parent
        queue.put(("MheEdgeError", f"{type(exc).__name__}: {first_line(exc)}"))


def profile_in_fresh_process(path: Path, **options: Any) -> dict[str, Any]:
    """`runtime.profile(path, **options)` in a spawned process; its report as a dict."""
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    child = context.Process(target=_profile_child, args=(queue, str(path), options), daemon=True)
    child.start()
    try:
        status, payload = _result_of(child, queue)
    except KeyboardInterrupt:
        child.terminate()
        raise
    finally:
        child.join()
    if status != "ok":  # the child's error class, so the exit code is the one it would have had
        error_class = getattr(errors, status, MheEdgeError)
        raise error_class(
            f"profiling {path.name} at {options.get('seq_len') or options.get('past_len')} tokens"
            f" failed: {payload}"
        )
    return payload


def _result_of(child, queue) -> tuple[str, Any]:
    """The child's one message; a child that dies without sending one (killed, or a script re-run by spawn
    that fails at import: guard it with `if __name__ == "__main__":`) is an error, never a hang."""
    import queue as queues

    while True:
        try:
            return queue.get(timeout=0.5)
        except queues.Empty:
            if not child.is_alive():
                try:
                    return queue.get(timeout=0.5)
                except queues.Empty:
                    return "MheEdgeError", (
                        f"the profiling process ended with exit code {child.exitcode} before reporting"
                        ' (run from a script? put the call under `if __name__ == "__main__":`)'
                    )
