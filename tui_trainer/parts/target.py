"""Resolve "package.module:object" strings named in a preset (it runs that code: a preset is
as trusted as a script)."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path
from typing import Any

from tui_trainer.errors import PresetError


def is_target(spec: object) -> bool:
    return isinstance(spec, str) and ":" in spec and not spec.startswith(("/", "."))


def resolve(spec: str, key: str) -> Any:
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise PresetError(f'"{spec}" is not "package.module:object"', key=key)
    # Let presets name modules that sit next to where the user runs (examples/, their project).
    cwd = str(Path.cwd())
    if cwd not in sys.path:
        sys.path.insert(0, cwd)
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        raise PresetError(
            f'cannot import "{module_name}" ({exc}); check the name, or run from the folder that holds it',
            key=key,
        ) from None
    except Exception as exc:  # the user's module raised while importing
        raise PresetError(f'importing "{module_name}" failed: {type(exc).__name__}: {exc}', key=key) from None
    obj = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            names = [n for n in dir(module) if not n.startswith("_")]
            from tui_trainer.errors import did_you_mean

            raise PresetError(f'"{module_name}" has no "{attr}"{did_you_mean(part, names)}', key=key)
        obj = getattr(obj, part)
    return obj


def check_kwargs(fn, kwargs: dict, section: str, *, skip=(), provided=()) -> None:
    """Every kwarg must be a parameter of `fn`; every required parameter must be given.

    `skip`: parameters we pass ourselves (params, optimizer); `provided`: ones we fill from the run.
    """
    import inspect

    from tui_trainer.errors import did_you_mean

    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return  # a builtin without a signature: let the call itself complain
    name = getattr(fn, "__name__", str(fn))
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    named = [n for n, p in params.items() if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and n not in skip]
    if not takes_any:
        for key in kwargs:
            if key not in named:
                hint = did_you_mean(key, named) or f"; it takes: {', '.join(named) or 'nothing'}"
                raise PresetError(f"{name} takes no argument \"{key}\"{hint}", key=f"{section}.{key}")
    for n, p in params.items():
        if (n in skip or n in provided or n in kwargs or p.default is not inspect.Parameter.empty
                or p.kind in (p.VAR_KEYWORD, p.VAR_POSITIONAL)):
            continue
        raise PresetError(f"{name} needs {n}; add {n} = ... to [{section}]", key=f"{section}.{n}")
