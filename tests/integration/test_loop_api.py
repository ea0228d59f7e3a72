"""tui_trainer.loop: the user's own textbook loop, run for real (headless here; the app in
test_loop_tmux.py). The keys' commands act on the user's objects between batches, the LR keys compose
with every kind of scheduler, a save holds everything a resume needs, stop and pause, prints go to
the Log pane (events), an exception ends the run without touching a good checkpoint, bad input is one
line and exit 2."""

from __future__ import annotations

import json
import logging
import sys
import threading
import time
import warnings
import weakref

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, IterableDataset

import tui_trainer
from tests.helpers.user_code import Blobs
from tui_trainer.run.catalog import summarize
from tui_trainer.run.history import open_runs
from tui_trainer.engine.commands import Pause, Resume, SaveCheckpoint, ScaleLr, SetTrainable, Stop

pytestmark = pytest.mark.timeout(120)

QUIET = dict(ui=False, log_every=1, log_min_interval_s=0)  # a report after exactly every step (the paced default: test_report_pacing.py)


def mlp(dropout: float = 0.0) -> nn.Module:
    return nn.Sequential(nn.Linear(4, 16), nn.Dropout(dropout), nn.Tanh(), nn.Linear(16, 3))


def events(run_dir) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "events.jsonl").read_text().splitlines()]


def kinds(run_dir, kind: str) -> list[dict]:
    return [e for e in events(run_dir) if e["kind"] == kind]


class Textbook:
    """A textbook loop over Blobs (96 samples, batch 16: 6 batches an epoch), with hooks for tests:
    `at[step]` = commands sent (as keys would be) while batch `step` trains; `seen` records, per
    step, the LR it trained with, the loss, and a copy of the first layer's weight after it."""

    def __init__(self, *, epochs=3, seed=0, dropout=0.0, lr=0.1, opt="sgd", sched=None, loader=None, at=None,
                 val=None, raise_at=None):
        torch.manual_seed(seed)
        self.model = mlp(dropout)
        if opt == "adamw":
            self.opt = torch.optim.AdamW(self.model.parameters(), lr=lr, weight_decay=0.1)
        else:
            self.opt = torch.optim.SGD(self.model.parameters(), lr=lr, momentum=0.9)
        self.sched = sched(self.opt) if sched is not None else None
        self.loader = loader if loader is not None else DataLoader(Blobs(96), batch_size=16)
        self.epochs, self.at, self.val, self.raise_at = epochs, dict(at or {}), val, raise_at
        self.crit = nn.CrossEntropyLoss()
        self.seen: dict[int, dict] = {}
        self.per_step = type(self.sched).__name__ in ("OneCycleLR",)

    def __call__(self, run):
        for epoch in run.epochs(self.epochs):
            self.model.train()
            for x, y in run.batches(self.loader):
                step = run.step + 1
                for command in self.at.pop(step, []):
                    run._control.send(command)  # what a key sends; applied before the next batch
                if step == self.raise_at:
                    raise ValueError(f"planned failure at step {step}")
                lr = self.opt.param_groups[0]["lr"]
                self.opt.zero_grad()
                loss = self.crit(self.model(x), y)
                loss.backward()
                self.opt.step()
                if self.per_step:
                    self.sched.step()
                run.log(loss=loss)
                self.seen[step] = {"lr": lr, "loss": loss.item(), "w0": self.model[0].weight.detach().clone()}
            val_loss = self.val[epoch] if self.val is not None else 1.0 / (epoch + 1)
            run.log_epoch(val_loss=val_loss, val_acc=0.5)
            if self.sched is not None and not self.per_step:
                if isinstance(self.sched, torch.optim.lr_scheduler.ReduceLROnPlateau):
                    self.sched.step(val_loss)
                else:
                    self.sched.step()

    def plain_step(self, run, x, y) -> None:
        """The textbook body alone (for loops that change the epoch's shape, not the step)."""
        self.opt.zero_grad()
        loss = self.crit(self.model(x), y)
        loss.backward()
        self.opt.step()
        run.log(loss=loss)

    def loop(self, tmp_path, name="run", **kw):
        kw = {**QUIET, **kw}
        return tui_trainer.loop(self, model=self.model, optimizer=self.opt, scheduler=self.sched,
                                run_dir=tmp_path / name, name="textbook", **kw)


# --------------------------------------------------------------------------- a whole run


def test_loop_runs_the_users_loop_and_writes_the_run(tmp_path, capsys, one_torch_thread):
    t = Textbook(epochs=3, sched=lambda o: torch.optim.lr_scheduler.StepLR(o, 1, 0.5))
    assert t.loop(tmp_path) == 0
    run = tmp_path / "run"
    ev = events(run)
    assert ev[0]["kind"] == "RunStarted" and ev[-1]["kind"] == "Finished"
    started = ev[0]
    assert (started["epochs"], started["steps_per_epoch"], started["total_steps"]) == (3, 6, 18)
    assert [row["name"] for row in started["layers"]] == ["0", "3"]
    assert started["plan"]["lrs"][0][0] == pytest.approx(0.1) and started["plan"]["lrs"][0][-1] == pytest.approx(0.025)
    final = ev[-1]
    assert (final["status"], final["step"], final["epoch"], final["exit_code"]) == ("completed", 18, 3, 0)
    ends = kinds(run, "EpochEnd")
    assert [e["epoch"] for e in ends] == [1, 2, 3] and [e["val_loss"] for e in ends] == [1.0, 0.5, 1 / 3]
    assert ends[2]["best_epoch"] == 3 and all(e["improved"] for e in ends)
    reports = kinds(run, "StepReport")
    losses = [loss for r in reports for loss in r["losses"]]
    assert losses == pytest.approx([t.seen[s]["loss"] for s in range(1, 19)])  # every step, read at report time
    assert [r["lrs"][0] for r in reports] == pytest.approx([0.1] * 6 + [0.05] * 6 + [0.025] * 6)
    ckpts = sorted(p.name for p in (run / "checkpoints").iterdir())
    assert ckpts == ["best.pt", "epoch-0001.pt", "epoch-0002.pt", "epoch-0003.pt", "last.pt"]  # keep_last 3
    saved = torch.load(run / "checkpoints" / "last.pt", weights_only=True)
    assert (saved["kind"], saved["step"], saved["epoch"], saved["batch_in_epoch"]) == ("loop", 18, 3, 0)
    for name, p in t.model.named_parameters():
        assert torch.equal(saved["model"][name], p.detach())
    assert saved["optimizer"]["state"] and saved["schedule"]["scheduler"]["last_epoch"] == 3
    assert saved["schedule"]["manual_factor"] == 1.0 and set(saved["rng"]) >= {"python", "torch"}
    assert type(t.sched) is torch.optim.lr_scheduler.StepLR  # the wrapper is gone when the loop ends
    out = capsys.readouterr().out
    assert "18 steps (3 epochs x 6)" in out and "epoch 3 done: train_loss" in out and "completed:" in out
    assert (run / "config.toml").is_file() and "epoch" in (run / "metrics.csv").read_text()


def test_a_logged_loss_is_kept_until_its_report_and_read_without_a_warning(tmp_path, one_torch_thread):
    """run.log keeps the loss tensor itself (no alias made a batch): alive until the report that reads
    it, then let go; and read with no "requires_grad ... to a scalar" warning (it would land in the
    Log pane of every loop)."""
    t = Textbook(epochs=2)
    refs: dict[int, weakref.ref] = {}
    alive_after: dict[int, list[int]] = {}

    def train(run):
        for _ in run.epochs(2):
            for x, y in run.batches(t.loader):
                step = run.step + 1
                t.opt.zero_grad()
                loss = t.crit(t.model(x), y)  # the last step's loss is now only the run's
                alive_after[step] = sorted(s for s, r in refs.items() if r() is not None)
                loss.backward()
                t.opt.step()
                run.log(loss=loss)
                refs[step] = weakref.ref(loss)

    with warnings.catch_warnings(record=True) as said:
        warnings.simplefilter("always")
        assert tui_trainer.loop(train, model=t.model, optimizer=t.opt, run_dir=tmp_path / "run",
                                **{**QUIET, "log_every": 3}) == 0
    assert not [w for w in said if "requires_grad" in str(w.message)]
    # a report after steps 3, 6, 9 and 12 (log_every 3, 6 batches an epoch): the losses since the last
    # one are held, the ones it read are not
    assert alive_after[2] == [1] and alive_after[3] == [1, 2] and alive_after[4] == []
    assert alive_after[6] == [4, 5] and alive_after[7] == [] and alive_after[12] == [10, 11]
    losses = [loss for r in kinds(tmp_path / "run", "StepReport") for loss in r["losses"]]
    assert len(losses) == 12 and all(0 < v < 10 for v in losses)


class _BlobStream(IterableDataset):
    """Blobs as a stream: a DataLoader over it has no len."""

    def __iter__(self):
        blobs = Blobs(96)
        return (blobs[i] for i in range(len(blobs)))


def test_a_loader_with_no_len_says_so_and_gets_an_eta_after_its_first_epoch(tmp_path, capsys, one_torch_thread):
    """An IterableDataset's loader: the run's length is not known at start. The lines say so (no
    "step 8/0", no "0 steps"), and from the second epoch the ETA counts epochs as long as the last."""
    t = Textbook(epochs=3, loader=DataLoader(_BlobStream(), batch_size=16))
    assert t.loop(tmp_path) == 0
    out = capsys.readouterr().out
    assert "3 epochs of a length not known ahead (the loader has no len)" in out and "0 steps" not in out
    assert "epoch 1/3 step 1 loss" in out and "step 1/" not in out
    reports = kinds(tmp_path / "run", "StepReport")
    assert [r["step"] for r in reports] == list(range(1, 19))
    assert all(r["eta_s"] is None for r in reports[:6]) and all(r["eta_s"] is not None for r in reports[6:])
    assert reports[-1]["eta_s"] == 0
    started = kinds(tmp_path / "run", "RunStarted")[0]
    assert (started["total_steps"], started["steps_per_epoch"]) == (0, 0)


def test_the_layer_table_gets_its_output_shapes_from_the_loops_first_forward(tmp_path, one_torch_thread):
    """RunStarted has no output shapes (no batch at start); the loop's own first forward gives them
    (LayerShapes, before the first report), with no extra forward (BatchNorm's statistics are the
    loop's alone) and no hook left on the model. A model whose parts are called one by one (a
    ModuleDict) gets them at the first report."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv1d(1, 4, 3, padding=1), nn.BatchNorm1d(4), nn.Flatten(), nn.Linear(32, 3))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    loader = DataLoader([(torch.randn(1, 8), i % 3) for i in range(48)], batch_size=16)
    forwards = []
    model[1].register_forward_hook(lambda *_: forwards.append(1))

    def train(run):
        for _ in run.epochs(2):
            for x, y in run.batches(loader):
                opt.zero_grad()
                loss = nn.functional.cross_entropy(model(x), y)
                loss.backward()
                opt.step()
                run.log(loss=loss)

    assert tui_trainer.loop(train, model=model, optimizer=opt, run_dir=tmp_path / "run", **QUIET) == 0
    ev = events(tmp_path / "run")
    started = ev[0]
    assert [row["out_shape"] for row in started["layers"]] == [None, None, None]
    shapes = [e for e in ev if e["kind"] == "LayerShapes"]
    assert len(shapes) == 1 and shapes[0]["shapes"] == [[16, 4, 8], [16, 4, 8], [16, 3]]
    kinds_in_order = [e["kind"] for e in ev]
    assert kinds_in_order.index("LayerShapes") < kinds_in_order.index("StepReport")
    assert len(forwards) == 6 and model[1].num_batches_tracked.item() == 6  # the loop's 6 batches alone
    assert all(len(m._forward_hooks) == (1 if m is model[1] else 0) for m in model.modules())

    parts = nn.ModuleDict({"a": nn.Linear(4, 8), "b": nn.Linear(8, 3)})
    t = Textbook(epochs=1)

    def by_parts(run):
        for x, y in run.batches(t.loader):
            run.log(loss=nn.functional.cross_entropy(parts["b"](parts["a"](x)), y).item())

    assert tui_trainer.loop(by_parts, model=parts, run_dir=tmp_path / "parts", **QUIET) == 0
    shapes = kinds(tmp_path / "parts", "LayerShapes")
    assert len(shapes) == 1 and shapes[0]["shapes"] == [[16, 8], [16, 3]] and shapes[0]["step"] == 1
    assert not any(m._forward_hooks for m in parts.modules())


def test_checkpoint_settings_and_keep_last(tmp_path, one_torch_thread):
    t = Textbook(epochs=4)
    assert t.loop(tmp_path, keep_last=1, every_steps=5) == 0
    names = sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir())
    assert names == ["best.pt", "epoch-0004.pt", "last.pt"]
    steps = [e["step"] for e in kinds(tmp_path / "run", "CheckpointSaved") if "step" in e["tags"]]
    assert steps == [5, 10, 15, 20]


# --------------------------------------------------------------------------- the keys


def test_every_key_acts_on_the_users_objects_between_batches(tmp_path, one_torch_thread):
    t = Textbook(epochs=4, opt="adamw", at={2: [ScaleLr(0.5), SetTrainable(("0",), False)], 4: [SaveCheckpoint()],
                                            6: [Pause()], 9: [SetTrainable(("0",), True), ScaleLr(2.0)],
                                            11: [Stop(reason="user")]})
    times = {}

    def resume_later(control):  # a person pressing p again, from another thread
        time.sleep(0.3)
        times["resume"] = time.monotonic()
        control.send(Resume())

    def train(run):
        for epoch in run.epochs(t.epochs):
            for x, y in run.batches(t.loader):
                step = run.step + 1
                times[step] = time.monotonic()
                for command in t.at.pop(step, []):
                    run._control.send(command)
                    if isinstance(command, Pause):
                        threading.Thread(target=resume_later, args=(run._control,), daemon=True).start()
                lr = t.opt.param_groups[0]["lr"]
                t.opt.zero_grad()
                loss = t.crit(t.model(x), y)
                loss.backward()
                t.opt.step()
                run.log(loss=loss)
                t.seen[step] = {"lr": lr, "w0": t.model[0].weight.detach().clone(),
                                "grad0": t.model[0].weight.grad, "rg": t.model[0].weight.requires_grad}
            run.log_epoch(val_loss=1.0)

    code = tui_trainer.loop(train, model=t.model, optimizer=t.opt, run_dir=tmp_path / "run", **QUIET)
    assert code == 0
    seen = t.seen
    # LR lower after step 2: steps 3..9 train with half; undone (x2) after step 9
    assert [seen[s]["lr"] for s in range(1, 12)] == pytest.approx([0.1] * 2 + [0.05] * 7 + [0.1] * 2)
    # freeze after step 2: layer 0 has no gradient and its weights are bit-identical through step 9
    assert all(not seen[s]["rg"] and seen[s]["grad0"] is None for s in range(3, 10))
    assert all(torch.equal(seen[s]["w0"], seen[2]["w0"]) for s in range(3, 10))
    assert seen[10]["rg"] and not torch.equal(seen[10]["w0"], seen[9]["w0"])  # unfrozen: it moves again
    # pause after step 6: step 7 waited for the Resume sent from another thread
    assert times[7] >= times["resume"] > times[6]
    run = tmp_path / "run"
    states = [e["state"] for e in kinds(run, "StateChanged")]
    assert states == ["running", "paused", "running", "stopping", "finished"]
    # save after step 4: a manual checkpoint of that moment, holding the manual factor and the freeze
    manual = torch.load(run / "checkpoints" / "manual-step-00000004.pt", weights_only=True)
    assert (manual["step"], manual["epoch"], manual["batch_in_epoch"]) == (4, 0, 4)
    assert manual["schedule"]["manual_factor"] == 0.5 and manual["trainable"]["0.weight"] is False
    assert torch.equal(manual["model"]["0.weight"], seen[4]["w0"])
    # stop after step 11: no more batches, no more epochs, the final save is that moment
    assert max(seen) == 11
    last = torch.load(run / "checkpoints" / "last.pt", weights_only=True)
    assert (last["step"], last["epoch"], last["batch_in_epoch"]) == (11, 1, 5)
    final = events(run)[-1]
    assert (final["status"], final["step"], final["epoch"], final["exit_code"]) == ("stopped", 11, 2, 0)
    changed = kinds(run, "TrainableChanged")
    assert [(c["step"], c["trainable"]) for c in changed] == [(2, False), (9, True)]
    assert [(c["step"], c["manual_factor"]) for c in kinds(run, "LrChanged")] == [(2, 0.5), (9, 1.0)]
    assert not kinds(run, "EpochEnd")[1:]  # epoch 2 was stopped: only epoch 1 ended


def test_a_stop_during_validation_lets_the_epoch_end_then_stops(tmp_path, one_torch_thread):
    t = Textbook(epochs=5)

    def train(run):
        for epoch in run.epochs(5):
            for x, y in run.batches(t.loader):
                t.opt.zero_grad()
                loss = t.crit(t.model(x), y)
                loss.backward()
                t.opt.step()
                run.log(loss=loss)
            if epoch == 1:
                run._control.send(Stop(reason="user"))  # pressed while validating epoch 2
            print(f"validated epoch {epoch}")
            run.log_epoch(val_loss=1.0 - epoch / 10)

    assert tui_trainer.loop(train, model=t.model, optimizer=t.opt, run_dir=tmp_path / "run", **QUIET) == 0
    run = tmp_path / "run"
    assert [e["epoch"] for e in kinds(run, "EpochEnd")] == [1, 2]
    last = torch.load(run / "checkpoints" / "last.pt", weights_only=True)
    assert (last["step"], last["epoch"], last["batch_in_epoch"]) == (12, 2, 0)
    assert [e["tags"] for e in kinds(run, "CheckpointSaved")][-1] == ["epoch", "last", "best"]  # no second save
    assert events(run)[-1]["status"] == "stopped"


@pytest.mark.parametrize("kind", ["StepLR", "ExponentialLR", "ReduceLROnPlateau", "OneCycleLR", "LambdaLR"])
def test_the_lr_keys_compose_with_each_kind_of_scheduler(tmp_path, kind, one_torch_thread):
    S = torch.optim.lr_scheduler
    make = {"StepLR": lambda o: S.StepLR(o, step_size=1, gamma=0.5),
            "ExponentialLR": lambda o: S.ExponentialLR(o, gamma=0.7),
            "ReduceLROnPlateau": lambda o: S.ReduceLROnPlateau(o, factor=0.5, patience=0),
            "OneCycleLR": lambda o: S.OneCycleLR(o, max_lr=0.2, total_steps=24),
            "LambdaLR": lambda o: S.LambdaLR(o, lambda e: 1.0 / (1 + e))}[kind]
    val = [1.0, 1.0, 1.0, 0.5]  # plateau: no improvement in epochs 2 and 3 -> halved twice
    plain = Textbook(epochs=4, sched=make, val=val)
    assert plain.loop(tmp_path, "plain") == 0
    keyed = Textbook(epochs=4, sched=make, val=val, at={4: [ScaleLr(0.5)], 9: [ScaleLr(0.5)], 17: [ScaleLr(2.0)]})
    assert keyed.loop(tmp_path, "keyed") == 0
    factor = {s: 1.0 if s <= 4 else 0.5 if s <= 9 else 0.25 if s <= 17 else 0.5 for s in range(1, 25)}
    reference = [plain.seen[s]["lr"] for s in range(1, 25)]
    assert len(set(reference)) > 2  # the scheduler moved the LR: the composition is tested, not a constant
    assert [keyed.seen[s]["lr"] for s in range(1, 25)] == pytest.approx(
        [reference[s - 1] * factor[s] for s in range(1, 25)], rel=1e-12)
    assert type(keyed.sched) is getattr(S, kind)  # the wrapper is gone after the loop
    # the scheduler only ever saw its own values: the same as without the keys
    assert keyed.sched.get_last_lr() == pytest.approx(plain.sched.get_last_lr(), rel=1e-12)
    assert keyed.sched.state_dict().keys() == plain.sched.state_dict().keys()
    saved = torch.load(tmp_path / "keyed" / "checkpoints" / "last.pt", weights_only=True)
    assert saved["schedule"]["manual_factor"] == 0.5
    if kind == "ReduceLROnPlateau":
        assert [e["reason"] for e in kinds(tmp_path / "keyed", "LrChanged")].count("plateau") == 2


def test_a_write_of_the_lr_by_the_loop_is_taken_as_it_is(tmp_path, one_torch_thread):
    t = Textbook(epochs=2, at={2: [ScaleLr(0.5)]})

    def train(run):
        for epoch in run.epochs(2):
            for group in t.opt.param_groups:  # a tutorial's adjust_learning_rate
                group["lr"] = 0.08 if epoch else 0.1
            for x, y in run.batches(t.loader):
                step = run.step + 1
                for command in t.at.pop(step, []):
                    run._control.send(command)
                t.seen[step] = t.opt.param_groups[0]["lr"]
                run.log(loss=1.0)

    assert tui_trainer.loop(train, model=t.model, optimizer=t.opt, run_dir=tmp_path / "run", **QUIET) == 0
    assert [t.seen[s] for s in range(1, 13)] == pytest.approx([0.1] * 2 + [0.05] * 4 + [0.08] * 6)
    assert [e["reason"] for e in kinds(tmp_path / "run", "LrChanged")] == ["manual", "loop"]


def test_an_unknown_layer_is_a_warning_and_changes_nothing(tmp_path, one_torch_thread):
    t = Textbook(epochs=1, at={1: [SetTrainable(("nope",), False)]})
    assert t.loop(tmp_path) == 0
    assert any("no layer named nope" in w["message"] for w in kinds(tmp_path / "run", "RunWarning"))
    assert all(p.requires_grad for p in t.model.parameters())


# --------------------------------------------------------------------------- resume


def _seeded(shuffle=True):
    return tui_trainer.seeded_loader(Blobs(96), batch_size=16, shuffle=shuffle, seed=7)


@pytest.mark.parametrize("cut", ["mid-epoch", "epoch boundary"])
def test_resume_with_the_seeded_loader_is_exact_bit_for_bit(tmp_path, cut, one_torch_thread):
    """Dropout (the global RNG), momentum, a StepLR, a manual LR change: a run cut by a stop and
    resumed from its last.pt trains exactly as a straight run, step by step and to the last bit."""
    sched = lambda o: torch.optim.lr_scheduler.StepLR(o, step_size=1, gamma=0.7)  # noqa: E731
    keys = {3: [ScaleLr(0.5)]}
    straight = Textbook(epochs=4, dropout=0.3, sched=sched, loader=_seeded(), at=dict(keys))
    assert straight.loop(tmp_path, "straight") == 0
    stop_at = 10 if cut == "mid-epoch" else 12  # 12: the last batch of epoch 2, the stop acts after its end
    first = Textbook(epochs=4, dropout=0.3, sched=sched, loader=_seeded(), at={**keys, stop_at: [Stop()]})
    assert first.loop(tmp_path, "cut") == 0
    last = torch.load(tmp_path / "cut" / "checkpoints" / "last.pt", weights_only=True)
    assert (last["step"], last["batch_in_epoch"]) == ((10, 4) if cut == "mid-epoch" else (12, 0))
    torch.manual_seed(999)  # the resumed process's RNG is whatever it is: the checkpoint puts it back
    resumed = Textbook(epochs=4, dropout=0.3, sched=sched, loader=_seeded(), seed=5)  # other initial weights
    assert resumed.loop(tmp_path, "cut", resume=tmp_path / "cut" / "checkpoints" / "last.pt") == 0
    losses = {**{s: v["loss"] for s, v in first.seen.items()}, **{s: v["loss"] for s, v in resumed.seen.items()}}
    assert sorted(resumed.seen) == list(range(stop_at + 1, 25))
    assert [losses[s] for s in range(1, 25)] == [straight.seen[s]["loss"] for s in range(1, 25)]  # bit for bit
    assert [resumed.seen[s]["lr"] for s in resumed.seen] == [straight.seen[s]["lr"] for s in resumed.seen]
    for (name, a), b in zip(straight.model.named_parameters(), resumed.model.parameters()):
        assert torch.equal(a, b), name
    ev = events(tmp_path / "cut")
    started = [e for e in ev if e["kind"] == "RunStarted"]
    assert len(started) == 2 and started[1]["start_step"] == stop_at and started[1]["resumed_from"]
    assert [e["epoch"] for e in ev if e["kind"] == "EpochEnd"] == [1, 2, 3, 4]
    assert ev[-1]["kind"] == "Finished" and ev[-1]["step"] == 24


def test_resume_auto_finds_the_newest_run_of_this_name(tmp_path, one_torch_thread):
    first = Textbook(epochs=3, loader=_seeded(), at={8: [Stop()]})
    assert tui_trainer.loop(first, model=first.model, optimizer=first.opt, name="auto", ui=False) == 0
    again = Textbook(epochs=3, loader=_seeded())
    assert tui_trainer.loop(again, model=again.model, optimizer=again.opt, name="auto", ui=False,
                            resume="auto") == 0
    runs = list((tmp_path / "runs").iterdir())
    assert len(runs) == 1 and sorted(again.seen) == list(range(9, 19))  # one history, continued


def test_a_plain_shuffling_loader_resumes_mid_epoch_with_a_warning(tmp_path, one_torch_thread):
    loader = lambda: DataLoader(Blobs(96), batch_size=16, shuffle=True)  # noqa: E731
    first = Textbook(epochs=2, loader=loader(), at={4: [Stop()]})
    assert first.loop(tmp_path) == 0
    again = Textbook(epochs=2, loader=loader())
    assert again.loop(tmp_path, resume=tmp_path / "run" / "checkpoints" / "last.pt") == 0
    assert sorted(again.seen) == list(range(5, 13))  # the 4 batches done are skipped
    warnings = [w["message"] for w in kinds(tmp_path / "run", "RunWarning")]
    assert sum("not the ones done before" in w for w in warnings) == 1


def test_resume_refuses_a_checkpoint_of_another_kind_or_model(tmp_path, capsys, one_torch_thread):
    t = Textbook(epochs=1)
    assert t.loop(tmp_path) == 0
    other = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 3))
    code = tui_trainer.loop(lambda run: None, model=other, run_dir=tmp_path / "o", ui=False,
                            resume=tmp_path / "run" / "checkpoints" / "last.pt")
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "from another model" in err[0]
    assert not (tmp_path / "o").exists()
    # the same model under fit: the loop's position and state mean other things there, so it is refused
    # (it loaded before, and a 1-epoch fit "resumed" at the loop's epoch 2 ended at once)
    loop_ckpt = tmp_path / "run" / "checkpoints" / "last.pt"
    with pytest.raises(SystemExit) as exit_:
        tui_trainer.fit(t.model, Blobs(32), None, optimizer=t.opt, loss=nn.CrossEntropyLoss(), epochs=1,
                        ui=False, run_dir=tmp_path / "f", resume=loop_ckpt)
    err = capsys.readouterr().err.strip().splitlines()
    assert exit_.value.code == 2 and err == [
        f"tui-trainer: error: fit: resume: {loop_ckpt} is a checkpoint of a tui_trainer.loop run; resume it with"
        f' loop(..., resume=) (to start from its weights: model.weights = "{loop_ckpt}" in a preset, or'
        " model.load_state_dict(torch.load(path, weights_only=True)['model']) before fit)"]
    # and the errors name the keyword the person wrote, not the CLI's --resume
    with pytest.raises(SystemExit):
        tui_trainer.fit(t.model, Blobs(32), None, optimizer=t.opt, loss=nn.CrossEntropyLoss(), epochs=1,
                        ui=False, name="nobody", resume="auto")
    fit_err = capsys.readouterr().err.strip()
    assert tui_trainer.loop(lambda run: None, model=t.model, ui=False, name="nobody", resume="auto") == 2
    loop_err = capsys.readouterr().err.strip()
    for api, said in (("fit", fit_err), ("loop", loop_err)):
        assert said == (f'tui-trainer: error: {api}: resume="auto": no runs/nobody-*/checkpoints/last.pt in this'
                        " directory; start without resume, or give the checkpoint's path")
    assert not (tmp_path / "f").exists() and not (tmp_path / "runs").exists()


def test_a_fit_checkpoint_is_not_resumed_by_a_loop(tmp_path, capsys, one_torch_thread):
    t = Textbook(epochs=1)
    result = tui_trainer.fit(t.model, Blobs(32), None, optimizer=t.opt, loss=nn.CrossEntropyLoss(), epochs=1,
                             ui=False, run_dir=tmp_path / "f")
    capsys.readouterr()
    assert t.loop(tmp_path, resume=result.last_path) == 2
    err = capsys.readouterr().err.strip()
    assert err == (f"tui-trainer: error: loop: resume: {result.last_path} is a checkpoint of a preset or fit run;"
                   " resume it the way it was made (to start your loop from its weights:"
                   " model.load_state_dict(torch.load(path, weights_only=True)['model']))")


# --------------------------------------------------------------------------- prints


def test_prints_become_log_lines_not_screen_output(tmp_path, capsys, one_torch_thread):
    handler = logging.StreamHandler(sys.stderr)  # made before the loop: holds the stream itself
    log = logging.getLogger("user.loop")
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    out_before, err_before = sys.stdout, sys.stderr
    t = Textbook(epochs=1)
    other_thread_said = []

    def train(run):
        print("hello from the loop")
        print("\x1b[31mred\x1b[0m and", "two", end="")
        print(" parts")
        sys.stderr.write("to stderr\n")
        for i in range(3):
            sys.stderr.write(f"\rprogress {i}/3")
        sys.stderr.write("\n\n")
        log.info("a logging record")
        th = threading.Thread(target=lambda: print("from another thread"))
        th.start()
        th.join()
        other_thread_said.append(True)
        for x, y in run.batches(t.loader):
            run.log(loss=1.0)
        print("no newline at the end", end="")

    assert tui_trainer.loop(train, model=t.model, run_dir=tmp_path / "run", **QUIET) == 0
    printed = [(e["text"], e["stream"]) for e in kinds(tmp_path / "run", "Printed")]
    assert printed == [("hello from the loop", "stdout"), ("red and two parts", "stdout"), ("to stderr", "stderr"),
                       ("progress 2/3", "stderr"), ("a logging record", "stderr"),
                       ("no newline at the end", "stdout")]
    assert sys.stdout is out_before and sys.stderr is err_before and handler.stream is err_before
    captured = capsys.readouterr()
    lines = captured.out.splitlines()
    assert any(line.endswith(" hello from the loop") and line[:2].isdigit() for line in lines)  # a timestamped line
    assert "from another thread" in lines  # another thread's print went where it always goes
    assert "hello from the loop" not in captured.err and "a logging record" not in captured.err
    log.removeHandler(handler)


# --------------------------------------------------------------------------- failures


def test_an_exception_in_the_loop_fails_the_run_and_keeps_the_good_checkpoint(tmp_path, capsys, one_torch_thread):
    t = Textbook(epochs=3, raise_at=9)  # epoch 2, after epoch 1's checkpoint
    assert t.loop(tmp_path) == 1
    run = tmp_path / "run"
    final = events(run)[-1]
    assert final["kind"] == "Failed" and final["step"] == 8 and final["epoch"] == 2
    assert final["error"] == "ValueError: planned failure at step 9" and final["emergency_path"] is None
    assert "in __call__" in final["traceback"] and "raise ValueError" in final["traceback"]
    last = torch.load(run / "checkpoints" / "last.pt", weights_only=True)
    assert last["step"] == 6  # epoch 1's: nothing was saved over it
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["best.pt", "epoch-0001.pt", "last.pt"]
    err = capsys.readouterr().err
    assert "Traceback (most recent call last)" in err and "planned failure at step 9" in err
    assert err.strip().splitlines()[-1].startswith("tui-trainer: FAILED at step 8: ValueError")


class _BadData(torch.utils.data.Dataset):
    def __len__(self):
        return 96

    def __getitem__(self, i):
        if i == 40:
            raise OSError("corrupt file number 40")
        return Blobs(96)[i]


def test_a_loader_failure_writes_an_emergency_checkpoint_of_the_last_safe_point(tmp_path, one_torch_thread):
    t = Textbook(epochs=2, loader=DataLoader(_BadData(), batch_size=16))
    assert t.loop(tmp_path) == 1
    run = tmp_path / "run"
    final = events(run)[-1]
    assert final["error"] == "OSError: corrupt file number 40" and final["step"] == 2
    emergency = torch.load(final["emergency_path"], weights_only=True)
    assert (emergency["step"], emergency["batch_in_epoch"]) == (2, 2)
    assert torch.equal(emergency["model"]["0.weight"], t.seen[2]["w0"])
    assert not (run / "checkpoints" / "last.pt").exists()  # an emergency file is never last.pt


def test_a_nonfinite_loss_ends_the_loop_without_a_save(tmp_path, one_torch_thread):
    t = Textbook(epochs=3, lr=1e6)  # diverges within epoch 1 (lr 1e6)

    def train(run):
        for epoch in run.epochs(3):
            for x, y in run.batches(t.loader):
                t.opt.zero_grad()
                loss = t.crit(t.model(x), y) * (float("nan") if run.step >= 3 else 1.0)
                loss.backward()
                t.opt.step()
                run.log(loss=loss)
            run.log_epoch(val_loss=1.0)

    assert tui_trainer.loop(train, model=t.model, optimizer=t.opt, run_dir=tmp_path / "run", **QUIET) == 1
    final = events(tmp_path / "run")[-1]
    assert final["status"] == "nonfinite" and final["exit_code"] == 1 and final["step"] == 4
    assert not (tmp_path / "run" / "checkpoints").exists()


# --------------------------------------------------------------------------- shapes of loops


def test_breaks_and_a_loop_without_run_epochs(tmp_path, one_torch_thread):
    t = Textbook()

    def train(run):  # the user's own range(); at most 4 batches an epoch; stops after epoch 2 by itself
        for epoch in range(5):
            for i, (x, y) in enumerate(run.batches(t.loader)):
                run.log(loss=float(i))
                if i == 3:
                    break
            run.log_epoch(val_loss=1.0)
            if epoch == 1:
                break

    assert tui_trainer.loop(train, model=t.model, optimizer=t.opt, run_dir=tmp_path / "run", **QUIET) == 0
    run = tmp_path / "run"
    assert [(e["epoch"], e["step"]) for e in kinds(run, "EpochEnd")] == [(1, 4), (2, 8)]
    last = torch.load(run / "checkpoints" / "last.pt", weights_only=True)
    assert (last["step"], last["epoch"], last["batch_in_epoch"]) == (8, 2, 0)

    u = Textbook()

    def breaks_out(run):
        for epoch in run.epochs(5):
            for x, y in run.batches(u.loader):
                run.log(loss=1.0)
            run.log_epoch(val_loss=1.0)
            if epoch == 1:
                break  # the user's own early stop

    assert tui_trainer.loop(breaks_out, model=u.model, run_dir=tmp_path / "b", **QUIET) == 0
    assert [e["epoch"] for e in kinds(tmp_path / "b", "EpochEnd")] == [1, 2]
    assert events(tmp_path / "b")[-1]["status"] == "completed"


def test_early_stopping_and_a_custom_monitor(tmp_path, one_torch_thread):
    t = Textbook(epochs=10)

    def train(run):
        for epoch in run.epochs(10):
            for x, y in run.batches(t.loader):
                run.log(loss=1.0)
            run.log_epoch(val_loss=1.0, val_f1=[0.5, 0.7, 0.6, 0.6, 0.6, 0.9][epoch])

    code = tui_trainer.loop(train, model=t.model, run_dir=tmp_path / "run", checkpoint={"monitor": "val_f1"},
                            early_stopping={"enabled": True, "monitor": "val_f1", "patience": 2}, **QUIET)
    assert code == 0
    ends = kinds(tmp_path / "run", "EpochEnd")
    assert [e["epoch"] for e in ends] == [1, 2, 3, 4] and ends[-1]["best"] == 0.7
    assert ends[-1]["metrics"]["val_f1"] == 0.6
    final = events(tmp_path / "run")[-1]
    assert final["status"] == "early_stopped" and final["best_epoch"] == 2
    assert "val_f1" in (tmp_path / "run" / "metrics.csv").read_text().splitlines()[0]


def test_epochs_without_the_monitored_number_are_never_judged_by_a_loss_for_an_accuracy(tmp_path, one_torch_thread):
    """monitor val_acc (it goes up), logged every other epoch: the epochs without it leave best.pt and
    the patience as they were (a train loss used to be taken for an accuracy: best.pt was the epoch of
    the highest loss). A loop that logs no val_loss (the default monitor) is judged by its
    train_loss, and its epoch lines say train_loss."""
    t = Textbook(epochs=6)

    def train(run):
        for epoch in run.epochs(6):
            for x, y in run.batches(t.loader):
                run.log(loss=[3.0, 2.0, 1.0, 0.5, 0.4, 0.3][epoch])
            if epoch % 2 == 1:
                run.log_epoch(val_acc=[0.5, 0.7, 0.6][epoch // 2])

    code = tui_trainer.loop(train, model=t.model, run_dir=tmp_path / "acc", checkpoint={"monitor": "val_acc"},
                            early_stopping={"enabled": True, "monitor": "val_acc", "patience": 2}, **QUIET)
    assert code == 0
    ends = kinds(tmp_path / "acc", "EpochEnd")
    assert [(e["epoch"], e["improved"], e["best"], e["best_epoch"], e["bad_epochs"]) for e in ends] == [
        (1, False, None, None, 0), (2, True, 0.5, 2, 0), (3, False, 0.5, 2, 0), (4, True, 0.7, 4, 0),
        (5, False, 0.7, 4, 0), (6, False, 0.7, 4, 1)]
    assert {e["monitor"] for e in ends} == {"val_acc"} and events(tmp_path / "acc")[-1]["status"] == "completed"

    def no_validation(run):
        for epoch in run.epochs(3):
            for x, y in run.batches(t.loader):
                run.log(loss=[2.0, 1.0, 1.5][epoch])

    assert tui_trainer.loop(no_validation, model=t.model, run_dir=tmp_path / "plain", **QUIET) == 0
    ends = kinds(tmp_path / "plain", "EpochEnd")
    assert [(e["monitor"], e["best"], e["best_epoch"]) for e in ends] == [
        ("train_loss", 2.0, 1), ("train_loss", 1.0, 2), ("train_loss", 1.0, 2)]
    assert events(tmp_path / "plain")[-1]["monitor"] == "train_loss"
    # what `ls` and `compare` name the best by
    assert [summarize(tmp_path / d).monitor for d in ("acc", "plain")] == ["val_acc", "train_loss"]
    assert [r.monitor for r in open_runs([tmp_path / "acc", tmp_path / "plain"])] == ["val_acc", "train_loss"]


# --------------------------------------------------------------------------- bad input


@pytest.mark.parametrize("call, says", [
    (dict(model="a model"), "loop: model: is a str; give the torch.nn.Module"),
    (dict(optimizer=torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=0.1)), "loop: optimizer: holds none of"),
    (dict(optimizer=[torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=0.1)] * 2),
     "loop: optimizer: is 2 optimizers; loop takes one: give the one the LR keys should act on"),
    (dict(batch_size=32), "loop: data.batch_size: is not a setting of loop"),
    (dict(epochs=3), "give the epochs to run.epochs(n)"),
    (dict(log_evry=3), 'loop: log_evry: unknown setting; did you mean "log_every"?'),
    (dict(monitor="val_acc"), "monitor is a key of checkpoint, early_stopping"),
    (dict(checkpoint={"monitor": "acc"}), 'a monitor is val_loss, val_acc, train_loss or val_<name>'),
    (dict(train_fn=lambda: None), "cannot be called with one argument"),
])
def test_bad_input_is_one_line_and_exit_2(tmp_path, capsys, call, says):
    model = mlp()
    kwargs = {"model": model, "run_dir": tmp_path / "run", "ui": False, **call}
    fn = kwargs.pop("train_fn", lambda run: None)
    assert tui_trainer.loop(fn, **kwargs) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("tui-trainer: error: ") and says in err[0], err
    assert not (tmp_path / "run").exists()


def test_the_public_names(tmp_path):
    assert {"loop", "Run", "seeded_loader"} <= set(tui_trainer.__all__)
    assert tui_trainer.loop.__doc__ and tui_trainer.Run.__doc__ and tui_trainer.seeded_loader.__doc__
    for name in ("epochs", "batches", "log", "log_epoch"):
        assert getattr(tui_trainer.Run, name).__doc__


def test_a_loader_with_no_len_gets_its_lr_plan_after_its_first_epoch(tmp_path, capsys, one_torch_thread):
    """No LR plan at start (no length). Once the first epoch has shown 6 batches, one LrPlanned plans
    3 epochs of 6 with the user's scheduler (StepLR, per epoch); the log says so, the LR pane then
    draws it, and an attached viewer's replay keeps it however long the run."""
    from tui_trainer.engine.events import RunWarning
    from tui_trainer.run.rundir import read_events
    from tui_trainer.run.server import MAX_OTHER, Replay
    from tui_trainer.ui.view import RunView

    t = Textbook(epochs=3, loader=DataLoader(_BlobStream(), batch_size=16),
                 sched=lambda opt: torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5))
    assert t.loop(tmp_path) == 0
    assert "LR plan made for 18 steps, each epoch as long as the first (6 batches)" in capsys.readouterr().out
    ev = events(tmp_path / "run")
    assert ev[0]["plan"]["note"] == "not plannable: the loader has no length"
    planned = [e for e in ev if e["kind"] == "LrPlanned"]
    assert [(e["step"], e["steps_per_epoch"]) for e in planned] == [(6, 6)]
    plan = planned[0]["plan"]
    assert (plan["total_steps"], plan["adaptive"], plan["note"]) == (18, False, "")
    lrs = plan["lrs"][0]
    assert sorted(set(lrs), reverse=True) == pytest.approx([0.1, 0.05, 0.025])  # halved at each epoch's end
    assert [e["kind"] for e in ev].index("LrPlanned") == [e["kind"] for e in ev].index("EpochEnd") + 1

    typed = read_events(tmp_path / "run" / "events.jsonl")
    view = RunView()
    for e in typed:
        view.apply(e)
    assert view.started.plan.total_steps == 18 and view.started.plan.lrs[0] == tuple(lrs)
    replay = Replay()
    for e in typed:
        replay.add(e)
    for i in range(MAX_OTHER + 10):
        replay.add(RunWarning(18, f"warning {i}"))
    lines = replay.lines().decode().splitlines()
    assert sum('"kind":"LrPlanned"' in line for line in lines) == 1


def test_a_resume_that_sets_no_new_best_still_names_the_best_checkpoint(tmp_path, one_torch_thread):
    """The resumed best (epoch 2) stays the best: the run's end named no best.pt (best_path None)."""
    def finished(run_dir):
        return [json.loads(line) for line in (run_dir / "events.jsonl").read_text().splitlines()][-1]

    assert Textbook(epochs=2, val=[0.5, 0.4]).loop(tmp_path) == 0
    best = tmp_path / "run" / "checkpoints" / "best.pt"
    assert finished(tmp_path / "run")["best_path"] == str(best)
    assert Textbook(epochs=3, val=[0.5, 0.4, 0.9]).loop(tmp_path, resume=best.parent / "last.pt") == 0
    end = finished(tmp_path / "run")
    assert (end["kind"], end["best"], end["best_epoch"], end["best_path"]) == ("Finished", 0.4, 2, str(best))


def test_resume_refuses_a_checkpoint_of_another_optimizer(tmp_path, capsys, one_torch_thread):
    """An SGD's state went into the Adam, whose first step failed on 'betas' with a traceback."""
    assert Textbook(epochs=1).loop(tmp_path) == 0
    last = tmp_path / "run" / "checkpoints" / "last.pt"
    capsys.readouterr()
    assert Textbook(epochs=2, opt="adamw").loop(tmp_path, resume=last) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"tui-trainer: error: loop: resume: {last} was saved with optimizer SGD and this run's is AdamW;"
                   " resume with the optimizer it was trained with (or start a new run from its weights)"], err
    model = mlp()
    done = tui_trainer.fit(model, Blobs(32), None, optimizer=torch.optim.SGD(model.parameters(), lr=0.1),
                           loss=nn.CrossEntropyLoss(), epochs=1, ui=False, run_dir=tmp_path / "f")
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_:
        tui_trainer.fit(model, Blobs(32), None, optimizer=torch.optim.Adam(model.parameters()),
                        loss=nn.CrossEntropyLoss(), epochs=2, ui=False, resume=done.last_path)
    assert exit_.value.code == 2
    assert capsys.readouterr().err.strip() == (
        f"tui-trainer: error: fit: resume: {done.last_path} was saved with optimizer SGD and this run's is Adam;"
        " resume with the optimizer it was trained with (or start a new run from its weights)")


def test_a_monitor_the_loop_never_logs_is_said_once(tmp_path, one_torch_thread):
    """checkpoint.monitor val_f1 while the loop logs val_loss alone: no best.pt, and nothing said."""
    t = Textbook(epochs=2)
    assert t.loop(tmp_path, checkpoint={"monitor": "val_f1"}) == 0
    events = [json.loads(line) for line in (tmp_path / "run" / "events.jsonl").read_text().splitlines()]
    said = [e["message"] for e in events if e["kind"] == "RunWarning" and "val_f1" in e["message"]]
    assert said == ["checkpoint.monitor is val_f1 and epoch 1 logged none (val_loss, val_acc, train_loss): no epoch"
                    " is judged and no best.pt is kept; run.log_epoch(val_f1=...) each epoch, or"
                    ' checkpoint={"monitor": "<one of those>"}'], said


def test_a_log_value_that_is_not_a_number_fails_naming_the_argument(tmp_path, one_torch_thread):
    """run.log("abc") failed deep inside float() with "could not convert string to float"."""
    model = mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)

    def train(run):
        for x, y in run.batches(DataLoader(Blobs(32), batch_size=16)):
            run.log(loss=1.0, acc="high")

    assert tui_trainer.loop(train, model=model, optimizer=opt, run_dir=tmp_path / "run", **QUIET) == 1
    final = events(tmp_path / "run")[-1]
    assert final["kind"] == "Failed" and final["error"] == ("TypeError: run.log(acc=...) is a str ('high'); give a"
                                                            " number or a tensor"), final["error"]


def test_every_epochs_0_still_ends_a_completed_loop_with_a_last_pt(tmp_path, one_torch_thread):
    t = Textbook(epochs=2, val=[1.0, 0.5])  # epoch 2 improves: its best.pt was the run's last save
    assert t.loop(tmp_path, checkpoint={"every_epochs": 0}) == 0
    ckpts = tmp_path / "run" / "checkpoints"
    assert sorted(p.name for p in ckpts.iterdir()) == ["best.pt", "last.pt"]
    assert torch.load(ckpts / "last.pt", weights_only=True)["step"] == 12


class Reshaped(Textbook):
    """The textbook body in a loop whose epochs change shape: it returns from inside run.batches at step
    `cut` (a user's time budget), and logs val_loss = `val_of(epoch)` (0-based) where that is not None."""

    def __init__(self, cut=None, val_of=lambda epoch: 1.0 / (epoch + 1), **kw):
        super().__init__(**kw)
        self.cut, self.val_of = cut, val_of

    def __call__(self, run):
        for epoch in run.epochs(self.epochs):
            for x, y in run.batches(self.loader):
                self.plain_step(run, x, y)
                if run.step + 1 == self.cut:
                    return
            if (val := self.val_of(epoch)) is not None:
                run.log_epoch(val_loss=val)


def test_a_return_from_inside_the_batches_leaves_the_epoch_unfinished_and_resumes_exactly(tmp_path, one_torch_thread):
    """It counted as a finished epoch: "epoch 2 done" from 3 of 6 batches, a best.pt judged on its train
    loss, and a resume that skipped the rest of the epoch (weights off by ~0.02)."""
    whole = Reshaped(epochs=3)
    assert whole.loop(tmp_path, "whole") == 0
    cut = Reshaped(cut=9, epochs=3)  # epoch 2, batch 3 of 6
    assert cut.loop(tmp_path, "cut") == 0
    ev = events(tmp_path / "cut")
    assert [e["epoch"] for e in ev if e["kind"] == "EpochEnd"] == [1]
    assert [e["tags"] for e in ev if e["kind"] == "CheckpointSaved"][-1] == ["final", "last"]
    assert ev[-1]["kind"] == "Finished" and ev[-1]["step"] == 9
    again = Reshaped(epochs=3)
    assert again.loop(tmp_path, "cut", resume=tmp_path / "cut" / "checkpoints" / "last.pt") == 0
    for (name, a), b in zip(whole.model.named_parameters(), again.model.parameters()):
        assert torch.equal(a, b), name
    assert [e["epoch"] for e in events(tmp_path / "cut") if e["kind"] == "EpochEnd"] == [1, 2, 3]


def test_a_loop_report_emitted_after_the_users_scheduler_step_shows_the_lr_its_steps_trained_at(tmp_path,
                                                                                                one_torch_thread):
    t = Textbook(epochs=2, lr=0.1, sched=lambda opt: torch.optim.lr_scheduler.StepLR(opt, 1, 0.5))
    assert t.loop(tmp_path, log_min_interval_s=60) == 0  # the epochs' last losses wait for a later report
    reports = [e for e in events(tmp_path / "run") if e["kind"] == "StepReport"]
    assert reports[-1]["step"] == 12 and reports[-1]["lrs"] == [0.05], reports[-1]  # epoch 2's, not 0.025


@pytest.mark.parametrize("val_in, best_epoch", [((0,), 1), ((1, 2), 3)])
def test_a_train_loss_never_stands_in_for_a_validation_loss_the_loop_logs(tmp_path, one_torch_thread, val_in,
                                                                          best_epoch):
    """An epoch without val_loss was judged by its train loss against the best val_loss (0.6 beat 5.0: best.pt
    overwritten); and once judged by train losses, the first val_loss never beat them."""
    # val_loss 5.0 - 0.1 x epoch in the epochs of val_in (0-based): worse than any train loss of this data
    t = Reshaped(val_of=lambda epoch: 5.0 - epoch * 0.1 if epoch in val_in else None, epochs=3)
    assert t.loop(tmp_path) == 0
    ends = [e for e in events(tmp_path / "run") if e["kind"] == "EpochEnd"]
    assert ends[-1]["best_epoch"] == best_epoch and ends[-1]["monitor"] == "val_loss", ends[-1]
    saved = torch.load(tmp_path / "run" / "checkpoints" / "best.pt", weights_only=True)
    assert saved["step"] == 6 * best_epoch
