"""Callbacks a preset names in [[callbacks]]: built, and their hooks checked, before the first step.

A callback has `on_event(event, control)` (sees every event; steers with commands), or the hook
names of tutorials and Keras, or both:

    on_epoch_start(epoch, model, optimizer)      before an epoch's first step
    on_batch_end(model, optimizer)               after each optimizer step (also: loss, step)
    on_validation_end(model, optimizer)          after validation (also: metrics)
    on_epoch_end(epoch, model, optimizer)        after the epoch's checkpoint (also: metrics)

Keras's names on_epoch_begin and on_train_batch_end are taken as on_epoch_start and on_batch_end.

A hook takes any of these parameters, by name: epoch (0-based, as in `for epoch in range(n)`),
step (optimizer steps done), model, optimizer, loss (on_batch_end: the step's loss, a device
tensor; reading it costs a host sync), metrics / logs (a dict: val_loss, val_acc, train_loss and
every [[metrics]] value). A hook that returns True stops the run (after a save, as `q` does). A
hook that writes `param_group["lr"]` makes a manual LR change that the run adopts and keeps.
"""

from __future__ import annotations

import inspect

from tui_trainer.config import Preset
from tui_trainer.errors import PresetError, did_you_mean
from tui_trainer.parts import target

HOOKS = ("on_epoch_start", "on_batch_end", "on_validation_end", "on_epoch_end")
# Keras spells two of them differently; they are the same hooks here
ALIASES = {"on_epoch_begin": "on_epoch_start", "on_train_batch_end": "on_batch_end"}
HOOK_ARGS = ("epoch", "step", "model", "optimizer", "loss", "metrics", "logs")


def hook_parameters(fn) -> tuple[str, ...]:
    """The names a hook takes (all of HOOK_ARGS for `**kwargs`)."""
    params = inspect.signature(fn).parameters.values()
    if any(p.kind is p.VAR_KEYWORD for p in params):
        return HOOK_ARGS
    return tuple(p.name for p in params if p.name in HOOK_ARGS)


def hook_of(obj, hook: str):
    """The callback's method for `hook` (under its own name or its Keras alias), or None."""
    fn = getattr(obj, hook, None)
    if not callable(fn):
        alias = next((a for a, h in ALIASES.items() if h == hook), None)
        fn = getattr(obj, alias, None) if alias else None
    return fn if callable(fn) else None


def check_callback(obj, i: int) -> None:
    """A callback must have on_event or a known hook, and its hooks may only ask for HOOK_ARGS."""
    name = type(obj).__name__
    hooks = [h for h in HOOKS if hook_of(obj, h) is not None]
    if not callable(getattr(obj, "on_event", None)) and not hooks:
        own = [n for n in dir(obj) if n.startswith("on_") and callable(getattr(obj, n))]
        hint = did_you_mean(own[0], [*HOOKS, *ALIASES, "on_event"]) if own else ""
        raise PresetError(f"{name} has neither on_event(event, control) nor a hook ({', '.join(HOOKS)})"
                          f"{hint or ''}", key=f"callbacks[{i}].target")
    for hook in hooks:
        try:
            params = inspect.signature(hook_of(obj, hook)).parameters.values()
        except (TypeError, ValueError):
            continue
        for p in params:
            if p.kind in (p.VAR_KEYWORD, p.VAR_POSITIONAL) or p.name in HOOK_ARGS:
                continue
            if p.default is inspect.Parameter.empty:
                raise PresetError(f"{name}.{hook} takes \"{p.name}\"{did_you_mean(p.name, HOOK_ARGS)}; a hook's"
                                  f" parameters are named from: {', '.join(HOOK_ARGS)}", key=f"callbacks[{i}].target")


def build_callbacks(preset: Preset) -> list[object]:
    out = []
    for i, cb in enumerate(preset.callbacks):
        cls = target.resolve(cb.target, f"callbacks[{i}].target")
        try:
            obj = cls(**cb.kwargs)
        except Exception as exc:
            raise PresetError(f"{cb.target}(...) failed: {type(exc).__name__}: {exc}", key=f"callbacks[{i}]") from None
        check_callback(obj, i)
        out.append(obj)
    return out
