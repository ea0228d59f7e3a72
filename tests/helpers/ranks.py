"""Rank functions for tests that start real processes through torch's elastic launcher
(`launch`). Each runs in its own spawned process with RANK / WORLD_SIZE set, on gloo (CPU)."""

from __future__ import annotations

import contextlib
import os
import socket
import uuid


def launch(fn, *args, n: int = 2, log_dir: str | None = None) -> dict:
    """Run `fn(*args)` on `n` ranks of one node; {rank: return value}. The launcher as the CLI
    uses it: no restarts, spawn."""
    from torch.distributed.elastic.multiprocessing import DefaultLogsSpecs, Std
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cfg = LaunchConfig(min_nodes=1, max_nodes=1, nproc_per_node=n, run_id=uuid.uuid4().hex, rdzv_backend="c10d",
                       rdzv_endpoint=f"127.0.0.1:{port}", rdzv_configs={}, max_restarts=0, monitor_interval=0.1,
                       start_method="spawn",
                       logs_specs=DefaultLogsSpecs(log_dir=log_dir, redirects=Std.NONE, tee=Std.NONE))
    return elastic_launch(cfg, fn)(*args)


def _dist():
    import torch

    torch.set_num_threads(1)
    from tui_trainer.engine.distributed import Dist

    return Dist.from_env("cpu")


def share_commands(steps: int, at: int) -> list:
    """Rank 0 has commands at step `at`; every rank records what it applies at which step."""
    from tui_trainer.engine.commands import ScaleLr, SetTrainable, Stop

    d = _dist()
    seen = []
    for step in range(steps):
        mine = [ScaleLr(0.5), SetTrainable(("fc",), False), Stop(reason="test")] if d.writer and step == at else []
        for cmd in d.share(mine):
            seen.append((step, cmd.to_json()))
    d.close()
    return [d.rank, d.world, seen]


def sum_exact() -> list:
    import torch

    d = _dist()
    a = torch.tensor([float(d.rank + 1), 1.0])
    b = torch.tensor([10 * (d.rank + 1)], dtype=torch.int64)
    d.sum_([a, b])
    d.close()
    return [a.tolist(), b.tolist()]


def freeze_under_ddp(steps: int = 3) -> dict:
    """Train, freeze layer 0 (rewrap), train, unfreeze (rewrap), train: per-phase weights."""
    import torch
    from torch import nn

    d = _dist()
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 2))
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    net = d.wrap(model, torch.device("cpu"))
    g = torch.Generator().manual_seed(100 + d.rank)  # each rank its own data
    out = {}

    def train():
        for _ in range(steps):
            x, y = torch.randn(8, 4, generator=g), torch.randint(0, 2, (8,), generator=g)
            nn.functional.cross_entropy(net(x), y).backward()
            opt.step()
            opt.zero_grad(set_to_none=True)

    train()
    for p in model[0].parameters():
        p.requires_grad_(False)
        p.grad = None
    net = d.wrap(model, torch.device("cpu"))
    frozen_before = [p.clone() for p in model[0].parameters()]
    train()
    out["frozen_kept"] = all(torch.equal(a, b) for a, b in zip(frozen_before, model[0].parameters()))
    for p in model[0].parameters():
        p.requires_grad_(True)
    net = d.wrap(model, torch.device("cpu"))
    train()
    out["moved_after_unfreeze"] = not all(torch.equal(a, b) for a, b in zip(frozen_before, model[0].parameters()))
    out["weights"] = [p.detach().tolist() for p in model.parameters()]
    d.close()
    return out


def train_run(preset: str, run_dir: str, overrides: list) -> dict:
    """One rank of a real run through `prepare` (as `torchrun -m tui_trainer PRESET --no-ui` does)."""
    import torch

    torch.set_num_threads(1)
    from tui_trainer.engine.events import Finished
    from tui_trainer.run.launch import prepare

    events = []
    session = prepare(preset, list(overrides), run_dir=run_dir, sinks=[events.append])
    try:
        final = session.trainer.run()
    finally:
        session.close()
    return {"rank": session.trainer.dist.rank, "status": getattr(final, "status", type(final).__name__),
            "step": final.step, "error": getattr(final, "error", None),
            "weights": [p.detach().double().sum().item() for p in session.trainer.model.parameters()],
            "state": {n: p.detach().clone() for n, p in session.trainer.model.named_parameters()},
            "events": len(events), "finished": isinstance(final, Finished),
            "losses": [loss for e in events if type(e).__name__ == "StepReport" for loss in e.losses],
            "early_syncs": session.trainer.early_syncs}


class SteerAt:
    """A callback on every rank; only rank 0's commands count (they are shared). At report `at` it
    cuts the LR and freezes layer "0"; it records, per step, the LR and whether "0" trains."""

    def __init__(self, at: int = 3):
        self.at, self.sent, self.seen = at, False, []

    def on_event(self, event, control) -> None:
        from tui_trainer.engine.commands import ScaleLr, SetTrainable
        from tui_trainer.engine.events import StepReport, TrainableChanged

        if isinstance(event, StepReport):
            self.seen.append(("report", event.step, event.lrs))
            if event.step >= self.at and not self.sent:
                self.sent = True
                control.send(ScaleLr(0.5))
                control.send(SetTrainable(("0",), False))
        elif isinstance(event, TrainableChanged):
            self.seen.append(("trainable", event.step, event.prefixes))


def steered_run(preset: str, run_dir: str) -> dict:
    """train_run, and what the SteerAt callback saw on this rank."""
    import torch

    torch.set_num_threads(1)
    from tui_trainer.run.launch import prepare

    session = prepare(preset, [], run_dir=run_dir)
    try:
        final = session.trainer.run()
    finally:
        session.close()
    (cb,) = session.trainer.callbacks
    return {"status": getattr(final, "status", None), "error": getattr(final, "error", None), "seen": cb.seen,
            "frozen": [n for n, p in session.trainer.model.named_parameters() if not p.requires_grad],
            "state": {n: p.detach().clone() for n, p in session.trainer.model.named_parameters()}}


# --------------------------------------------------------------------------- faults and edge cases

_step_calls = {"n": 0}


def step_failing_on_rank_1(model, batch, loss_fn):
    """A user step that raises on rank 1 alone, at its 6th call (the start-up check is the 1st):
    a failure the other rank does not have."""
    x, y = batch
    _step_calls["n"] += 1
    if os.environ.get("RANK") == "1" and _step_calls["n"] >= 6:
        raise RuntimeError("boom on rank 1 alone")
    return loss_fn(model(x), y)


class StopOnRank0:
    """A tutorial hook that asks for a stop on rank 0 alone (at step `at`): commands enter on rank 0,
    so every rank must stop at the same step, without a collective that only rank 0 reaches."""

    def __init__(self, at: int = 4):
        self.at = at

    def on_batch_end(self, step):
        return os.environ.get("RANK") == "0" and step >= self.at


def evaluate_with_an_empty_shard() -> dict:
    """Validation where rank 1's shard is empty: the lazily sized metric sums (classes, values per
    sample) exist on rank 0 only. Returns the reduced result and rank 0's one-process result."""
    import torch

    from tui_trainer.config import MetricSection
    from tui_trainer.engine.epochs import evaluate
    from tui_trainer.parts.metrics import build_metrics

    d = _dist()
    g = torch.Generator().manual_seed(7)
    x, y = torch.randn(12, 4, generator=g), torch.arange(12) % 3
    model = torch.nn.Linear(4, 3)
    torch.nn.init.constant_(model.weight, 0.1)
    model.weight.data[0, 0] = 1.0

    def step(m, batch, loss_fn):
        a, b = batch
        out = m(a)
        return {"loss": loss_fn(out, b), "outputs": out, "targets": b}

    def metrics():
        return build_metrics([MetricSection(name=n) for n in ("f1", "dice", "accuracy")], "cpu")

    batches = [(x[i:i + 4], y[i:i + 4]) for i in range(0, 12, 4)] if d.rank == 0 else []
    cls = evaluate(model, batches, torch.nn.functional.cross_entropy, torch.device("cpu"),
                   contextlib.nullcontext, lambda: False, step=step, metrics=metrics(), reduce=d.sum_)
    reg = torch.nn.Linear(4, 2)
    torch.nn.init.constant_(reg.weight, 0.2)
    torch.nn.init.zeros_(reg.bias)
    yr = torch.randn(12, 2, generator=g)

    def rstep(m, batch, loss_fn):
        a, b = batch
        out = m(a)
        return {"loss": torch.nn.functional.mse_loss(out, b), "outputs": out, "targets": b}

    rmetrics = lambda: build_metrics([MetricSection(name=n) for n in ("mae", "r2")], "cpu")  # noqa: E731
    rbatches = [(x[i:i + 4], yr[i:i + 4]) for i in range(0, 12, 4)] if d.rank == 0 else []
    rr = evaluate(reg, rbatches, None, torch.device("cpu"), contextlib.nullcontext, lambda: False,
                  step=rstep, metrics=rmetrics(), reduce=d.sum_)
    out = {"cls": [cls.loss, cls.acc, cls.metrics], "reg": [rr.loss, rr.metrics]}
    if d.rank == 0:  # the same batches in one process, no reduction
        one = evaluate(model, batches, torch.nn.functional.cross_entropy, torch.device("cpu"),
                       contextlib.nullcontext, lambda: False, step=step, metrics=metrics())
        rone = evaluate(reg, rbatches, None, torch.device("cpu"), contextlib.nullcontext,
                        lambda: False, step=rstep, metrics=rmetrics())
        out["one"] = {"cls": [one.loss, one.acc, one.metrics], "reg": [rone.loss, rone.metrics]}
    d.close()
    return out


def fit_run(run_dir: str) -> dict:
    """tui_trainer.fit on every rank of a torchrun-style start (the user's script under torchrun)."""
    import torch
    from torch import nn

    import tui_trainer
    from tests.helpers.user_code import Blobs, mlp

    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    result = tui_trainer.fit(model, Blobs(96), Blobs(24, seed=1), optimizer=opt, loss=nn.CrossEntropyLoss(),
                             epochs=2, batch_size=8, ui=False, device="cpu", run_dir=run_dir, log_every=2)
    return {"status": result.status, "step": result.step, "metrics": result.metrics, "best": result.best,
            "run_dir": result.run_dir, "best_path": result.best_path, "last_path": result.last_path,
            "state": {n: p.detach().clone() for n, p in model.named_parameters()}}


class Seen:
    """On every rank: what each StepReport, TrainableChanged and StateChanged found (the LR, whether
    layer "0" trains, the state), by step, for comparing the ranks."""

    def __init__(self):
        self.seen = []
        self.model = None

    def on_event(self, event, control) -> None:
        from tui_trainer.engine.events import StateChanged, StepReport, TrainableChanged

        if isinstance(event, StepReport):
            self.seen.append(("report", event.step, event.lrs))
        elif isinstance(event, TrainableChanged):
            self.seen.append(("trainable", event.step, event.prefixes, event.trainable))
        elif isinstance(event, StateChanged):
            self.seen.append(("state", event.step, event.state))


def seen_run(preset: str, run_dir: str) -> dict:
    """A real rank, serving the control socket on rank 0, recording with its Seen callback."""
    import torch

    torch.set_num_threads(1)
    from tui_trainer.run.launch import prepare

    session = prepare(preset, [], run_dir=run_dir, serve=True)
    try:
        final = session.trainer.run()
    finally:
        session.close()
    (cb,) = session.trainer.callbacks
    return {"status": getattr(final, "status", None), "error": getattr(final, "error", None), "step": final.step,
            "seen": cb.seen, "state": {n: p.detach().clone() for n, p in session.trainer.model.named_parameters()},
            "lr": session.trainer.optimizer.param_groups[0]["lr"]}
