"""In-process runs of the real engine for tests: the launch path the CLI takes (`prepare`), test
callbacks that send commands at a given step or record what the trainer thread sees, and a
model that fails on purpose. Callbacks use the public interface: `on_event(event, control)`."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from tui_trainer.engine.commands import Command, Stop
from tui_trainer.engine.events import Event, Failed, Finished, StepReport
from tui_trainer.run.launch import Session, prepare


@dataclass
class Outcome:
    session: Session
    events: list[Event]
    final: Finished | Failed

    @property
    def model(self) -> nn.Module:
        return self.session.trainer.model

    def of(self, kind: type) -> list:
        return [e for e in self.events if isinstance(e, kind)]


def run(preset: Path, *overrides: str, callbacks: Iterable[object] | Callable[[Session], Iterable[object]] = (),
        resume: str | None = None, run_dir: Path | None = None, layer_stats: bool = False,
        sinks: Iterable[Callable[[Event], None]] = ()) -> Outcome:
    """One run through `prepare` (as the CLI does); `callbacks` may be a function of the session
    for callbacks that need the live model."""
    events: list[Event] = []
    session = prepare(preset, list(overrides), resume=resume, run_dir=run_dir, sinks=[events.append, *sinks],
                      layer_stats=layer_stats)
    session.trainer.callbacks.extend(callbacks(session) if callable(callbacks) else callbacks)
    try:
        final = session.trainer.run()
    finally:
        session.close()
    return Outcome(session, events, final)


class At:
    """Send commands right after the step numbered in `plan` (needs train.log_every = 1)."""

    def __init__(self, plan: dict[int, Command | list[Command]]):
        self.plan = {step: cmds if isinstance(cmds, list) else [cmds] for step, cmds in plan.items()}

    def on_event(self, event, control) -> None:
        if isinstance(event, StepReport) and event.step in self.plan:
            for command in self.plan.pop(event.step):
                control.send(command)


class StopAt(At):
    """A preset-level callback: stop after step `step` ([[callbacks]] target = "tests.helpers.engine:StopAt")."""

    def __init__(self, step: int):
        super().__init__({step: Stop(reason="test")})


@dataclass
class Snapshots:
    """Copies of the named parameters after every reported step, taken on the trainer thread."""

    model: nn.Module
    names: tuple[str, ...]
    at: dict[int, dict[str, torch.Tensor]] = field(default_factory=dict)

    def on_event(self, event, control) -> None:
        if isinstance(event, StepReport):
            params = dict(self.model.named_parameters())
            self.at[event.step] = {n: params[n].detach().clone() for n in self.names}


def edit(path: Path, *replacements: tuple[str, str]) -> Path:
    """Rewrite parts of a preset file (each `old` must be there)."""
    text = path.read_text(encoding="utf-8")
    for old, new in replacements:
        assert old in text, old
        text = text.replace(old, new)
    path.write_text(text, encoding="utf-8")
    return path


TINY_OPTIMIZER = 'name = "SGD"\nlr = 0.05\nmomentum = 0.9\n'


def failing_cnn(fail_at: int = 3, num_classes: int = 10) -> nn.Module:
    """A small CNN whose training forward raises on its `fail_at`-th call (a real failure mid-run)."""
    return _Failing(fail_at, num_classes)


class _Failing(nn.Module):
    def __init__(self, fail_at: int, num_classes: int):
        super().__init__()
        self.fail_at, self.calls = fail_at, 0
        self.body = nn.Sequential(nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, num_classes))

    def forward(self, x):
        if self.training:
            self.calls += 1
            if self.calls == self.fail_at:
                raise RuntimeError(f"planned failure on training call {self.calls}")
        return self.body(x)


def record_lrs(optimizer: torch.optim.Optimizer) -> list[list[float]]:
    """The LR of every group at every optimizer step, as the step is taken (`lrs[k]`: 0-based step k)."""
    lrs: list[list[float]] = []
    optimizer.register_step_pre_hook(lambda opt, args, kwargs: lrs.append([g["lr"] for g in opt.param_groups]))
    return lrs


def resnetish(num_classes: int = 10) -> nn.Module:
    """A tiny model with resnet's module names (conv1, bn1, layer1-4 of two blocks, fc): presets in
    tests can name layers as for resnet18 without paying for torchvision and an 11M-parameter init."""
    def layer(cin: int, cout: int) -> nn.Sequential:
        return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1), nn.Conv2d(cout, cout, 3, padding=1))

    model = nn.Sequential()
    model.add_module("conv1", nn.Conv2d(3, 4, 3, padding=1))
    model.add_module("bn1", nn.BatchNorm2d(4))
    for i in range(1, 5):
        model.add_module(f"layer{i}", layer(4, 4))
    model.add_module("pool", nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten()))
    model.add_module("fc", nn.Linear(4, num_classes))
    return model
