"""Distributed runs (torch.distributed): which rank this process is, the one writer, commands shared
at step boundaries, DDP (re)wrapping and exact reductions. One process (world 1) pays nothing:
every method is a no-op there.

Commands enter on rank 0 only (keys, the control socket, signals, callbacks). They reach every rank
after the same step in the trainer's sync (Trainer._sync, about every SYNC_EVERY_S = 0.1 s): their
number rides in the collective that already carries the losses (on CPU an all_gather started before
the syncing step's backward: `gather_started`), and their JSON follows in one broadcast on a CPU/gloo control
group (the default group itself on CPU ranks, a gloo group of its own beside NCCL) only when there
are some (`commands`). Before the first step
and while paused, `share()` asks rank 0 on the control group (a two-element int64 broadcast, about
250 us on 2 CPU ranks). Never a CUDA sync of their own, never a barrier that only rank 0 reaches.
A gloo collective costs ~1-2 ms in place on a loaded 2-core box, so the engine makes about ten a
second, not one a step: a command waits at most ~0.15 s (and one step) before every rank applies it.

Freezing under DDP: DDP buckets only the parameters that required grad when it was built, so a
change of the trainable set rebuilds the wrapper around the same module (`wrap`), keeping the
optimizer and its state. `find_unused_parameters=True` is not the fix: a parameter frozen when the
wrapper was built and unfrozen later is never all-reduced, and the ranks drift apart silently.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch

from tui_trainer.engine.commands import Command, from_json


@dataclass
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    control: Any = None  # the gloo process group commands travel on (None: the default group, gloo on CPU)
    alone: bool = False  # this rank failed: the others will not meet it in any collective again
    every: int = 1  # steps until the next share, as rank 0 said in the last one

    @property
    def active(self) -> bool:
        return self.world > 1

    def go_alone(self) -> None:
        """This rank failed on its own (an exception the others did not have). From now on it calls no
        collective: the others are at another point of the loop, and a collective that only this rank
        enters (a barrier, the loss reduction of its emergency save) would block it until the
        backend's timeout, or pair with the others' next collective of another size. Sums stay this
        rank's own and commands its own; it writes what it can and exits, and the others then fail
        on the lost connection (the launcher stops them)."""
        self.alone = True

    @property
    def writer(self) -> bool:
        """Rank 0 alone writes the run directory, checkpoints and the control socket."""
        return self.rank == 0

    @classmethod
    def from_env(cls, device_type: str = "cpu") -> Dist:
        """The rank torchrun (or tui-trainer's launcher) started this process as; world 1 without one.
        Joins the process group (NCCL on CUDA, else gloo) and makes the gloo control group."""
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if world <= 1:
            return cls()
        import torch.distributed as dist

        if not dist.is_initialized():
            dist.init_process_group(backend="nccl" if device_type == "cuda" else "gloo")
        # NCCL: a gloo group of its own for the commands (CPU tensors, no CUDA sync), made by every
        # rank in the same order right after joining. Gloo: the default group already is one; a
        # second would add three threads a rank (two run loops and a TCP loop) that wake at every
        # sync: on 2 CPU ranks ~25 us of CPU a step, for nothing.
        control = dist.new_group(backend="gloo") if device_type == "cuda" else None
        return cls(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")), control)

    def share(self, commands: list[Command], every: int = 1) -> list[Command]:
        """Rank 0's `commands` on every rank, in order (the other ranks pass their own, ignored:
        commands never enter there), and rank 0's `every` (steps until the next share) in
        `self.every`. Every rank must call it at the same step boundary."""
        if not self.active or self.alone:
            self.every = every
            return commands
        import torch.distributed as dist

        head = torch.tensor([len(commands) if self.writer else 0, every], dtype=torch.int64)
        dist.broadcast(head, src=0, group=self.control)
        count, self.every = int(head[0]), max(1, int(head[1]))  # a CPU tensor: no device sync
        if count == 0:
            return []
        payload = [[c.to_json() for c in commands] if self.writer else None]
        dist.broadcast_object_list(payload, src=0, group=self.control)
        return [from_json(d) for d in payload[0]]

    def commands(self, mine: list[Command], count: int) -> list[Command]:
        """Rank 0's `count` commands (`mine` on rank 0) on every rank, in order: their JSON in one
        broadcast on the control group. The count came in the sync's collective (Trainer._read), so
        a sync without commands costs nothing more. Every rank must call it at the same point."""
        if not self.active or self.alone:
            return mine
        if count == 0:
            return []
        import torch.distributed as dist

        payload = [[c.to_json() for c in mine] if self.writer else None]
        dist.broadcast_object_list(payload, src=0, group=self.control)
        return [from_json(d) for d in payload[0]]

    def sum_(self, tensors: list[torch.Tensor]) -> None:
        """Sum each tensor over the ranks, in place, in one collective (sums and counts: exact)."""
        if not self.active or self.alone or not tensors:
            return
        import torch.distributed as dist

        flat = torch.cat([t.detach().reshape(-1).to(torch.float64 if t.device.type != "mps" else t.dtype)
                          for t in tensors])
        dist.all_reduce(flat)
        start = 0
        for t in tensors:
            n = t.numel()
            t.copy_(flat[start:start + n].reshape(t.shape).to(t.dtype))
            start += n

    def gather_started(self, tensor: torch.Tensor):
        """Start gathering the 1-D CPU `tensor` of every rank (the same length on each) on the control
        group; returns (work, out): `.wait()` on the work (None in one process or alone) before reading
        `out`, every rank's tensor one after another in rank order (alone: this rank's own). The
        trainer starts a sync this way before the backward of the step that syncs, so that its round
        trips overlap the backward instead of adding to the step. A gather, not a sum: on gloo an
        all_gather is about half the messages and thread hand-offs of an all_reduce of the same data
        (6 sends and ~9 receives a rank against 12 and ~19 on 2 ranks), 40-47% less CPU a sync
        (~0.6 against ~1.2 ms a rank: benchmarks/ddp.py --collective), and each rank then sums
        what it needs in rank order."""
        if not self.active or self.alone:
            return None, tensor
        import torch.distributed as dist

        out = torch.empty(tensor.numel() * self.world, dtype=tensor.dtype)
        # all_gather_single: all_gather_into_tensor renamed in newer torch, where the old name warns
        gather = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor
        return gather(out, tensor, group=self.control, async_op=True), out

    def gather_(self, tensor: torch.Tensor) -> torch.Tensor:
        """`gather_started`, waited for: every rank's `tensor` in rank order."""
        work, out = self.gather_started(tensor)
        if work is not None:
            work.wait()
        return out

    def wrap(self, module: torch.nn.Module, device: torch.device) -> torch.nn.Module:
        """The module to run forward passes through: DDP around `module` (rebuilt after every change
        of the trainable set), or `module` itself in one process."""
        if not self.active:
            return module
        from torch.nn.parallel import DistributedDataParallel as DDP

        ids = [device.index if device.index is not None else self.local_rank] if device.type == "cuda" else None
        return DDP(module, device_ids=ids)

    def close(self) -> None:
        if self.alone:
            # A rank that failed on its own leaves with the process group open: its exit closes the
            # connections, so the others learn of it only once this process is gone, and the
            # launcher sees this rank fail first (and names it, not a rank that failed on the loss).
            return
        if self.active:
            import torch.distributed as dist

            if dist.is_initialized():
                dist.destroy_process_group()
