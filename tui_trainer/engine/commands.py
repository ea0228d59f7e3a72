"""What the engine is told. Applied between steps, in the order sent, within one step."""

from __future__ import annotations

import dataclasses
import queue
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Command:
    @property
    def kind(self) -> str:
        return type(self).__name__

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind, **dataclasses.asdict(self)}


@dataclass(frozen=True)
class SaveCheckpoint(Command):
    tag: str = "manual"  # manual (kept, never rotated) or signal (SIGUSR1)


@dataclass(frozen=True)
class ScaleLr(Command):
    """Multiply the LR of every group; the schedule continues from the scaled value."""

    factor: float


@dataclass(frozen=True)
class SetTrainable(Command):
    """requires_grad of every parameter under these module-name prefixes ("" = whole model);
    `rest`, when set, applies to every other parameter in the same step (freeze-to)."""

    prefixes: tuple[str, ...]
    trainable: bool
    rest: bool | None = None


@dataclass(frozen=True)
class Pause(Command):
    pass


@dataclass(frozen=True)
class Resume(Command):
    pass


@dataclass(frozen=True)
class Stop(Command):
    """Finish the current step, save, end. `signum` set when a signal asked for it."""

    reason: str = "user"
    signum: int | None = None


COMMAND_TYPES: dict[str, type[Command]] = {
    cls.__name__: cls for cls in (SaveCheckpoint, ScaleLr, SetTrainable, Pause, Resume, Stop)
}


def from_json(data: dict[str, Any]) -> Command:
    data = dict(data)
    cls = COMMAND_TYPES[data.pop("kind")]
    if cls is SetTrainable:
        data["prefixes"] = tuple(data["prefixes"])
    return cls(**data)


class Control:
    """The sending end of the command queue. `send` is safe from any thread and from a signal
    handler (SimpleQueue.put is reentrant)."""

    def __init__(self, commands: queue.SimpleQueue | None = None):
        self.queue: queue.SimpleQueue = commands if commands is not None else queue.SimpleQueue()

    def send(self, command: Command) -> None:
        self.queue.put(command)
