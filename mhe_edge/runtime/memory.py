"""Peak-memory probes: the process's peak RSS (CPU) and device memory through NVML (CUDA)."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np

# re-exported for the runtime: memory estimates live with the accounting, which training reads too
from mhe_edge.accounting import available_memory_bytes, check_fits  # noqa: F401


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
