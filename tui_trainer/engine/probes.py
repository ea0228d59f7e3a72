"""Memory probes: one `torch.cuda.memory_stats()` per read; NVML utilisation at most once a second;
the process's CPU use and the host's available memory (psutil: a read of /proc each, no device call)
at most every HOST_EVERY_S, the last numbers in between (a rank reads at every report).

CPU use is psutil's `cpu_percent(interval=None)`: the process's CPU time since the previous call over
the wall time between them (100 = one core), so it needs no sleep, only two readings; the first
call (in __init__) starts the clock.

Many ranks: every rank reads its own memory at every report (host-side calls: no CUDA sync) and
turns it into one slot of floats (`slot`). On CPU ranks the sync's all_gather carries each rank's
slot next to its losses; on CUDA each rank writes its slot into a vector of `world` slots, zeros
elsewhere (`pack`), summed in the all_reduce that already sums the losses. Either way every slot
reaches every rank with no collective of its own, in rank order, and `unpack` turns the slots back
into one MemorySample per rank. The
decision to gather is the same on every rank (every report, never a per-rank clock). Host names,
which do not change, are gathered once at start (`hosts`).
"""

from __future__ import annotations

import math
import os
import socket
import time

import torch

from tui_trainer.engine.events import MemorySample

HOST_EVERY_S = 0.5  # CPU use over less time is mostly noise; the screen draws the memory pane at 1 Hz


def usable_cores() -> int:
    """The cores this process may run on (its affinity; all of them where the OS cannot say)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # macOS, Windows
        return os.cpu_count() or 1


class MemoryProbe:
    def __init__(self, device: torch.device):
        self.device = device
        self._process = None
        self._psutil = None
        self._cores = usable_cores()
        self._host: tuple[float | None, int | None, int | None] = (None, None, None)
        self._host_at = -math.inf
        try:
            import psutil

            self._psutil = psutil
            self._process = psutil.Process()
            self._process.cpu_percent(interval=None)  # starts the clock: the first read measures from here
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

    def host(self) -> tuple[float | None, int | None, int | None]:
        """(CPU percent, host available bytes, host total bytes), read at most every HOST_EVERY_S."""
        now = time.monotonic()
        if self._process is not None and now - self._host_at >= HOST_EVERY_S:
            self._host_at = now
            try:
                vm = self._psutil.virtual_memory()
                self._host = (self._process.cpu_percent(interval=None), vm.available, vm.total)
            except Exception:  # a /proc that cannot be read: unknown, not a failed run
                self._host = (None, None, None)
        return self._host

    def read(self) -> MemorySample:
        cpu, available, host_total = self.host()
        host = dict(cpu_percent=cpu, cpu_cores=self._cores, host_available=available, host_total=host_total)
        if self.device.type != "cuda":
            return MemorySample(device=str(self.device), rss=self.rss(), **host)
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
            **host,
        )


# One rank's slot: a presence mark (1: after the sum, 1 in every slot means every rank wrote its
# own), the device (kind, index), then the sample's numbers. None is -1 (every number is >= 0).
# Bytes are integers below 2**53: exact in float64, and so is their sum with zeros.
SLOT = ("present", "kind", "index", "rss", "allocated", "reserved", "peak", "total", "utilization",
        "cpu_percent", "cpu_cores", "host_available", "host_total")
FLOATS = ("utilization", "cpu_percent")  # the others are whole numbers
KINDS = ("cpu", "cuda", "mps", "xpu")
_NONE = -1.0


def slot(sample: MemorySample) -> list[float]:
    """`sample` as one slot of floats (SLOT: a presence mark, then the device and the numbers)."""
    kind, _, index = sample.device.partition(":")
    mine = [1.0, float(KINDS.index(kind)) if kind in KINDS else _NONE, float(index) if index.isdigit() else _NONE]
    for name in SLOT[3:]:
        value = getattr(sample, name)
        mine.append(_NONE if value is None else float(value))
    return mine


def pack(sample: MemorySample, rank: int, world: int) -> list[float]:
    """`sample` in slot `rank` of `world` slots, zeros in the others (to be summed over the ranks)."""
    out = [0.0] * (len(SLOT) * world)
    out[rank * len(SLOT):(rank + 1) * len(SLOT)] = slot(sample)
    return out


def unpack(vector: list[float], world: int) -> tuple[MemorySample, ...]:
    """The samples of the ranks, in rank order, from the sum of every rank's `pack` (or every rank's
    `slot`, gathered in rank order); () unless every rank wrote its slot exactly once (a sum that did
    not happen, a rank that sent nothing)."""
    n = len(SLOT)
    if len(vector) != n * world or any(vector[r * n] != 1.0 for r in range(world)):
        return ()
    out = []
    for r in range(world):
        _, kind, index, *numbers = vector[r * n:(r + 1) * n]
        name = KINDS[int(kind)] if 0 <= kind < len(KINDS) else "?"
        fields = dict(zip(SLOT[3:], (None if v < 0 or not math.isfinite(v) else v for v in numbers)))
        fields["rss"] = fields["rss"] or 0
        out.append(MemorySample(device=name if index < 0 else f"{name}:{int(index)}",
                                **{k: v if v is None or k in FLOATS else int(v) for k, v in fields.items()}))
    return tuple(out)


def packed(sample: MemorySample, rank: int, world: int, device: torch.device) -> torch.Tensor:
    """`pack` as a float64 tensor on `device` (where the losses are, to share their all_reduce). The
    copy to a GPU is non_blocking: CUDA stages the few bytes and returns, no wait for the stream."""
    vector = torch.tensor(pack(sample, rank, world), dtype=torch.float64)
    return vector if device.type == "cpu" else vector.to(device, non_blocking=True)


def hosts(dist) -> tuple[str, ...]:
    """Every rank's host name in rank order (one all_gather_object on the gloo control group, at
    start: every rank calls it at the same point); () in one process."""
    if not dist.active:
        return ()
    import torch.distributed

    names: list = [None] * dist.world
    torch.distributed.all_gather_object(names, socket.gethostname(), group=dist.control)
    return tuple(str(n) for n in names)
