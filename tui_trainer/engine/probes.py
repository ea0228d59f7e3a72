"""Memory probes: one `torch.cuda.memory_stats()` per read; NVML utilisation at most once a second."""

from __future__ import annotations

import time

import torch

from tui_trainer.engine.events import MemorySample


class MemoryProbe:
    def __init__(self, device: torch.device):
        self.device = device
        self._process = None
        try:
            import psutil

            self._process = psutil.Process()
        except ImportError:
            pass
        self._total = None
        self._nvml = None
        self._util: float | None = None
        self._util_at = 0.0
        if device.type == "cuda":
            index = device.index if device.index is not None else torch.cuda.current_device()
            self._index = index
            self._total = torch.cuda.get_device_properties(index).total_memory
            try:
                import pynvml

                pynvml.nvmlInit()
                self._nvml = pynvml.nvmlDeviceGetHandleByIndex(index)
            except Exception:  # no NVML: utilisation stays unknown
                self._nvml = None

    def rss(self) -> int:
        return self._process.memory_info().rss if self._process is not None else 0

    def read(self) -> MemorySample:
        if self.device.type != "cuda":
            return MemorySample(device=str(self.device), rss=self.rss())
        stats = torch.cuda.memory_stats(self._index)
        now = time.monotonic()
        if self._nvml is not None and now - self._util_at >= 1.0:
            self._util_at = now
            try:
                import pynvml

                self._util = float(pynvml.nvmlDeviceGetUtilizationRates(self._nvml).gpu)
            except Exception:
                self._util = None
        return MemorySample(
            device=str(self.device),
            rss=self.rss(),
            allocated=stats.get("allocated_bytes.all.current", 0),
            reserved=stats.get("reserved_bytes.all.current", 0),
            peak=stats.get("allocated_bytes.all.peak", 0),
            total=self._total,
            utilization=self._util,
        )
