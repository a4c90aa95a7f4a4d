"""Peak memory of a stretch of code in this process, above a baseline taken by `PeakMemory.start()`.

- CPU: the kernel's resident-set high-water mark. Writing "5" to /proc/self/clear_refs resets VmHWM to the current
  VmRSS (Linux >= 4.0; it works in unprivileged containers too), so peak = VmHWM after - VmRSS at the reset, exact at
  page granularity. Where that write is refused, a thread samples VmRSS every ~1 ms and the result is
  max(sampled peak, ru_maxrss if it rose past its value at the start); `PeakMemory.method` says which ran.
- CUDA: torch.cuda.max_memory_allocated() after reset_peak_memory_stats(), minus memory_allocated() at the reset.
"""
import os
import resource
import threading
import time


def _status_kb() -> dict:
    out = {}
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(("VmHWM:", "VmRSS:")):
                key, value = line.split(":", 1)
                out[key] = int(value.split()[0])
    return out


def _rss_kb() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") // 1024


def reset_hwm() -> bool:
    """Reset this process's VmHWM to its VmRSS; True when the kernel allowed it and it took effect."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        s = _status_kb()
        return s["VmHWM"] <= s["VmRSS"] + 256
    except (OSError, KeyError):
        return False


class PeakMemory:
    """Peak memory above a baseline taken by `start()`; `peak_mb()` may be read several times."""

    def __init__(self, device: str = "cpu"):
        self.device, self.method, self._thread, self._stop = device, None, None, None

    def start(self) -> None:
        if self.device == "cuda":
            import torch
            torch.cuda.synchronize()
            self.base = torch.cuda.memory_allocated()
            torch.cuda.reset_peak_memory_stats()
            self.method = "cuda max_memory_allocated - memory_allocated at reset"
            return
        if not os.path.exists("/proc/self/status"):
            self.base, self.ru_base = None, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
            self.method = "ru_maxrss delta (no /proc: a peak below the process's earlier peak is missed)"
            return
        if reset_hwm():
            self.base = _status_kb()["VmRSS"]
            self.method = "clear_refs=5 + VmHWM - VmRSS"
            return
        self.base = _rss_kb()
        self.ru_base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        self.sampled = self.base
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        self.method = "VmRSS sampled every 1 ms + ru_maxrss delta (clear_refs refused)"

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.sampled = max(self.sampled, _rss_kb())
            time.sleep(0.001)

    def peak_mb(self) -> float:
        if self.device == "cuda":
            import torch
            torch.cuda.synchronize()
            return (torch.cuda.max_memory_allocated() - self.base) / 2**20
        ru = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        if self.base is None:
            return max(ru - self.ru_base, 0) / 1024
        if self._thread is None:
            return max(_status_kb()["VmHWM"] - self.base, 0) / 1024
        peak = max(self.sampled, _rss_kb(), ru if ru > self.ru_base else 0)
        return max(peak - self.base, 0) / 1024

    def stop(self) -> None:
        if self._stop is not None:
            self._stop.set()
            self._thread.join()
