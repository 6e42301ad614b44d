"""Peak-memory probes: the process's peak RSS (CPU) and device memory through NVML (CUDA)."""

from __future__ import annotations

import ctypes
import os
import threading
import time
from pathlib import Path

import numpy as np

# re-exported for the runtime: memory estimates live with the accounting, which training reads too
from mhe_edge.accounting import available_memory_bytes, check_fits  # noqa: F401

_M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter (malloc.h)
LARGE_BLOCK_BYTES = 1 << 20  # blocks above this get a mapping of their own


def return_large_blocks_to_the_os(threshold: int = LARGE_BLOCK_BYTES) -> bool:
    """Have glibc give every allocation above `threshold` a mapping of its own, unmapped when freed.

    By default glibc raises that threshold to the largest block freed so far (up to 32 MiB): once ONNX
    Runtime has freed the copy of the weights it parsed from an inline-weights file, blocks of that size
    come from the heap, where freed ones stay resident. A 101 MB export's `generate` process peaked at
    249 MiB that way and at 201 MiB with the threshold fixed; a plain session of the file, at 178-222.
    For processes that run ONNX Runtime sessions (PyTorch's training and export churn through large
    blocks, which would each be mapped afresh). A threshold the user set (`MALLOC_MMAP_THRESHOLD_`)
    is left alone. False where nothing changed: another C library (macOS, musl) or the user's own."""
    if "MALLOC_MMAP_THRESHOLD_" in os.environ:
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError, TypeError):
        return False
    return bool(mallopt(_M_MMAP_THRESHOLD, threshold))


def reset_peak_rss() -> bool:
    """Reset VmHWM to the current RSS (Linux: write 5 to /proc/self/clear_refs). False where unsupported."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def peak_rss_bytes() -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


class DevicePeakMemory:
    """Samples NVML's used device memory on a thread; `peak` is the highest seen (None without pynvml)."""

    def __init__(self, device_index: int = 0, interval_s: float = 0.002):
        self.peak: int | None = None
        self._stop = threading.Event()
        self._interval = interval_s
        try:
            import pynvml

            pynvml.nvmlInit()
            self._nvml = pynvml
            self._handle = pynvml.nvmlDeviceGetHandleByIndex(device_index)
        except Exception:  # no NVML here: report no figure rather than a wrong one
            self._nvml = None

    def __enter__(self):
        if self._nvml:
            self.peak = 0
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak or 0, self._nvml.nvmlDeviceGetMemoryInfo(self._handle).used)
            time.sleep(self._interval)

    def __exit__(self, *exc):
        if self._nvml:
            self._stop.set()
            self._thread.join()
        return False


def read_bandwidth_bytes_per_s(size_bytes: int = 256 << 20, repeats: int = 5) -> float:
    """This machine's memory read bandwidth as a decode step sees it: a matrix-vector product over
    `size_bytes` of float32 weights (BLAS, all its threads), best of `repeats`. Decode reads every weight
    once per token, so weights / this bandwidth is the fastest a step can be on the CPU."""
    rows = max(1, size_bytes // (4 * 4096))
    matrix = np.ones((rows, 4096), np.float32)
    vector = np.ones(4096, np.float32)
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        matrix @ vector
        best = min(best, time.perf_counter() - started)
    return matrix.nbytes / best
