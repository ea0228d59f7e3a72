"""tui-trainer: a terminal training monitor for PyTorch that you can steer.

From Python (both open the same monitor as the CLI: panes, keys, checkpoints, `attach`):

    import tui_trainer
    result = tui_trainer.fit(model, train_data, val_data, optimizer=opt, loss=criterion, epochs=5)
    tui_trainer.loop(train, model=model, optimizer=opt, scheduler=sched)   # your own loop
    loader = tui_trainer.seeded_loader(dataset, batch_size=64)             # for loop's exact resume

The names load on first use, so `import tui_trainer` (and the CLI's --help) stays light.
"""

__version__ = "0.1.0"
__all__ = ["fit", "Result", "loop", "Run", "seeded_loader"]

_PUBLIC = {name: "tui_trainer.api" for name in __all__}  # defined in run/fit.py and run/loop.py


def __getattr__(name: str):
    if name in _PUBLIC:
        import importlib

        return getattr(importlib.import_module(_PUBLIC[name]), name)
    raise AttributeError(f"module 'tui_trainer' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
