"""tui_trainer.fit with the user's own objects: a real run (the engine, headless here), its result,
its run directory, commands applied to the user's objects, the user's scheduler under the LR keys,
exact resume, DataLoaders, and bad input as one line with exit code 2."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader

import tui_trainer
from tests.helpers.engine import At
from tests.helpers.user_code import Blobs, mlp
from tui_trainer.engine.commands import ScaleLr, SetTrainable, Stop

pytestmark = pytest.mark.timeout(120)

QUIET = dict(ui=False, device="cpu", log_every=1, log_min_interval_s=0)  # exact report steps (test_report_pacing.py: the default)


def objects(seed: int = 0, lr: float = 0.1):
    torch.manual_seed(seed)
    model = mlp()
    return model, torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)


def events(run_dir) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "events.jsonl").read_text().splitlines()]


def test_fit_trains_the_users_objects_and_says_how_it_ended(tmp_path, one_torch_thread):
    model, opt = objects()
    before = [p.detach().clone() for p in model.parameters()]
    result = tui_trainer.fit(model, Blobs(96), Blobs(24, seed=1), optimizer=opt, loss=nn.CrossEntropyLoss(),
                             metrics=["accuracy", "f1"], epochs=2, batch_size=16, run_dir=tmp_path / "run", **QUIET)
    assert (result.status, result.exit_code, result.step, result.epoch) == ("completed", 0, 12, 2)
    assert result.monitor == "val_loss" and result.best is not None
    assert set(result.metrics) >= {"train_loss", "val_loss", "val_acc", "val_f1"}
    assert result.best_path == str(tmp_path / "run" / "checkpoints" / "best.pt")
    assert not all(torch.equal(a, b) for a, b in zip(before, model.parameters()))  # the user's model trained
    saved = torch.load(result.last_path, weights_only=True)
    for name, p in model.named_parameters():
        assert torch.equal(saved["model"][name], p.detach())
    config = (tmp_path / "run" / "config.toml").read_text()
    assert 'arch = "python:torch.nn.modules.container.Sequential"' in config  # what ran, not a preset default
    assert 'dataset = "python:tests.helpers.user_code.Blobs"' in config
    assert events(tmp_path / "run")[-1]["kind"] == "Finished"


def test_the_keys_act_on_the_users_objects(tmp_path, one_torch_thread):
    model, opt = objects()
    plan = At({2: [ScaleLr(0.5), SetTrainable(("0",), False)], 5: Stop(reason="test")})
    first = model[0].weight
    seen = {}

    class Watch:
        def on_event(self, event, control):
            if type(event).__name__ == "StepReport":
                seen[event.step] = (opt.param_groups[0]["lr"], first.detach().clone())

    result = tui_trainer.fit(model, Blobs(96), None, optimizer=opt, loss=nn.CrossEntropyLoss(), epochs=5,
                             batch_size=16, callbacks=[plan, Watch()], run_dir=tmp_path / "run", **QUIET)
    assert result.status == "stopped" and result.step == 5
    assert seen[2][0] == pytest.approx(0.1) and seen[3][0] == pytest.approx(0.05)
    assert torch.equal(seen[3][1], seen[5][1])  # frozen after step 2: bit-identical from step 3 on
    assert not model[0].weight.requires_grad and model[2].weight.requires_grad


@pytest.mark.parametrize("kind", ["StepLR", "OneCycleLR"])
def test_the_lr_keys_compose_with_the_users_scheduler(tmp_path, kind, one_torch_thread):
    model, opt = objects()
    if kind == "StepLR":  # per epoch, chainable: 0.1, 0.05, 0.025 ...
        sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
        # a report comes before the epoch's scheduler step: it shows the LR its step trained with
        expected = lambda step: 0.1 * 0.5 ** ((step - 1) // 6)  # noqa: E731
    else:  # per step (fit knows OneCycleLR is), closed form
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.2, total_steps=18)
        twin = torch.optim.lr_scheduler.OneCycleLR(torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=0.1),
                                                   max_lr=0.2, total_steps=18)
        lrs = [twin.get_last_lr()[0]]
        for _ in range(17):
            twin.optimizer.step()
            twin.step()
            lrs.append(twin.get_last_lr()[0])
        # a per-step scheduler steps before the report: it shows the LR of the next step
        expected = lambda step: lrs[step]  # noqa: E731
    used = {}

    class Watch:
        def on_event(self, event, control):
            if type(event).__name__ == "StepReport":
                used[event.step] = event.lrs[0]

    tui_trainer.fit(model, Blobs(96), None, optimizer=opt, loss=nn.CrossEntropyLoss(), scheduler=sched, epochs=3,
                    batch_size=16, callbacks=[At({4: ScaleLr(0.5)}), Watch()], run_dir=tmp_path / "run", **QUIET)
    for step in range(1, 18):
        factor = 0.5 if step > 4 else 1.0  # sent at the report of step 4: applied before step 5
        assert used[step] == pytest.approx(expected(step) * factor, rel=1e-9), step


def test_fit_resumes_exactly_from_a_checkpoint(tmp_path, one_torch_thread):
    def run(cut: int | None, resume=None, where="a"):
        model, opt = objects()
        sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.7)
        extra = {"max_steps": cut} if cut else {}
        result = tui_trainer.fit(model, Blobs(96), Blobs(24, seed=1), optimizer=opt, loss=nn.CrossEntropyLoss(),
                                 scheduler=sched, epochs=3, batch_size=16, name="resumable", resume=resume,
                                 run_dir=tmp_path / where, **QUIET, **extra)
        return result, model

    straight, model_a = run(None, where="straight")
    cut, _ = run(8, where="cut")
    assert cut.step == 8
    resumed, model_b = run(None, resume=cut.last_path, where="cut")
    assert resumed.status == "completed" and resumed.step == straight.step == 18
    for (name, a), b in zip(model_a.named_parameters(), model_b.parameters()):
        assert torch.equal(a, b), name


def test_a_shuffling_dataloader_is_used_as_it_is_and_the_run_says_resume_is_not_exact(tmp_path, one_torch_thread):
    model, opt = objects()
    loader = DataLoader(Blobs(96), batch_size=32, shuffle=True)
    result = tui_trainer.fit(model, loader, DataLoader(Blobs(24, seed=1), batch_size=8), optimizer=opt,
                             loss=nn.CrossEntropyLoss(), epochs=2, run_dir=tmp_path / "run", **QUIET)
    assert result.status == "completed" and result.step == 6  # 3 batches of 32 per epoch: the loader's own
    warnings = [e["message"] for e in events(tmp_path / "run") if e["kind"] == "RunWarning"]
    assert any("a resume mid-epoch skips the batches already done, but not the same samples" in w for w in warnings)


def _bad(capsys, **kwargs) -> str:
    model, opt = objects()
    args = dict(model=model, train_data=Blobs(32), optimizer=opt, loss=nn.CrossEntropyLoss(), epochs=1, **QUIET)
    args.update(kwargs)
    with pytest.raises(SystemExit) as exit_:
        tui_trainer.fit(**args)
    assert exit_.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    return err


def test_bad_input_is_one_line_naming_the_argument_and_exit_2(tmp_path, capsys):
    other, _ = objects()
    err = _bad(capsys, optimizer=torch.optim.SGD(other.parameters(), lr=0.1), run_dir=tmp_path / "a")
    assert err == ("tui-trainer: error: fit: optimizer: holds none of the model's parameters: make it on this"
                   " model's parameters (model.parameters())")
    err = _bad(capsys, epoch=3, run_dir=tmp_path / "b")
    assert err.startswith('tui-trainer: error: fit: epoch: unknown setting; did you mean "epochs"?')
    wrong = nn.Sequential(nn.Linear(7, 3))  # takes 7 features; the samples have 4
    err = _bad(capsys, model=wrong, optimizer=torch.optim.SGD(wrong.parameters(), lr=0.1), run_dir=tmp_path / "c")
    assert err.startswith("tui-trainer: error: fit: model: ") and "7" in err and "4" in err, err
    model, opt = objects()  # a OneCycleLR made for fewer steps than the run makes failed at the run's end
    short = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.5, total_steps=2)
    err = _bad(capsys, model=model, optimizer=opt, scheduler=short, epochs=3, run_dir=tmp_path / "o")
    assert err.startswith("tui-trainer: error: fit: scheduler: OneCycleLR fails when stepped through the run's 3"
                          " optimizer steps (1 an epoch: ") and err.endswith("; give it total_steps=3 (or epochs and"
                                                                              " steps_per_epoch=1)"), err
    from torch.utils.data import TensorDataset

    reg = nn.Linear(4, 1)  # accuracy on a regression's targets counted (output > 0) == (target > 0.5)
    data = TensorDataset(torch.randn(32, 4), torch.randn(32, 1) * 3)
    err = _bad(capsys, model=reg, optimizer=torch.optim.SGD(reg.parameters(), lr=0.1), loss=nn.MSELoss(),
               train_data=data, val_data=data, metrics=["accuracy"], run_dir=tmp_path / "r")
    assert err.startswith("tui-trainer: error: fit: metrics: accuracy counts classes, and these targets are real"
                          " numbers ((8, 1) float32, such as ") and err.endswith("for a regression use mae, rmse or"
                                                                                 " r2"), err
    err = _bad(capsys, scheduler={"monitor": "val_acc"}, run_dir=tmp_path / "s")
    assert err == ('tui-trainer: error: fit: scheduler: is a dict, not a scheduler; give the scheduler object here'
                   ' and its settings as **{"scheduler.monitor": "val_acc"}'), err
    err = _bad(capsys, lr=0.5, run_dir=tmp_path / "d")
    assert "fit takes your optimizer object itself" in err
    err = _bad(capsys, loss=nn.CrossEntropyLoss, run_dir=tmp_path / "l")  # the class: calling it made a module
    assert err == ("tui-trainer: error: fit: loss: is the class CrossEntropyLoss, not a loss; give an instance, e.g."
                   " CrossEntropyLoss()"), err
    assert not (tmp_path / "a").exists() and not (tmp_path / "c").exists()  # nothing written


def test_a_checkpoint_that_does_not_fit_is_refused_naming_fits_resume(tmp_path, capsys, one_torch_thread):
    model, opt = objects()
    done = tui_trainer.fit(model, Blobs(32), None, optimizer=opt, loss=nn.CrossEntropyLoss(), epochs=1,
                           run_dir=tmp_path / "a", **QUIET)
    capsys.readouterr()
    wider = nn.Sequential(nn.Linear(4, 9), nn.ReLU(), nn.Linear(9, 3))
    err = _bad(capsys, model=wider, optimizer=torch.optim.SGD(wider.parameters(), lr=0.1), resume=done.last_path,
               run_dir=tmp_path / "b")
    assert err.startswith(f"tui-trainer: error: fit: resume: {done.last_path} is from another model (") and \
        err.endswith("; resume with the model it was trained with"), err
    assert not (tmp_path / "b").exists()


class LabelsAsText(Blobs):
    def __getitem__(self, i: int):
        x, y = super().__getitem__(i)
        return x, str(int(y))


class Unreadable(Blobs):
    def __getitem__(self, i: int):
        raise KeyError(i)


def test_a_training_set_the_step_cannot_take_is_bad_input_even_with_validation_data(tmp_path, capsys):
    """Only the validation set's first samples were checked at start: a training set with text labels,
    or one that cannot be read, failed at step 0 with an emergency checkpoint instead."""
    err = _bad(capsys, train_data=LabelsAsText(32), val_data=Blobs(24, seed=1), run_dir=tmp_path / "a")
    assert err.startswith("tui-trainer: error: fit: loss: ") and "targets tuple(str, str" in err, err
    err = _bad(capsys, train_data=Unreadable(32), val_data=Blobs(24, seed=1), run_dir=tmp_path / "b")
    assert err == "tui-trainer: error: fit: train_data: cannot read sample 0: KeyError: 0", err
    err = _bad(capsys, train_data=Blobs(32), val_data=Unreadable(24), run_dir=tmp_path / "c")
    assert err == "tui-trainer: error: fit: val_data: cannot read sample 0: KeyError: 0", err
    assert not any((tmp_path / d).exists() for d in "abc")


def test_a_run_dir_that_holds_a_run_is_refused_unless_it_resumes(tmp_path, capsys, one_torch_thread):
    """A new run into an old run's directory replaced its best.pt and last.pt and mixed two histories."""
    model, opt = objects()
    done = tui_trainer.fit(model, Blobs(32), None, optimizer=opt, loss=nn.CrossEntropyLoss(), epochs=1,
                           run_dir=tmp_path / "a", **QUIET)
    capsys.readouterr()
    before = {p.name: p.read_bytes() for p in (tmp_path / "a").rglob("*") if p.is_file()}
    err = _bad(capsys, run_dir=tmp_path / "a")
    n = len(list((tmp_path / "a" / "checkpoints").glob("*.pt")))
    assert err == (f"tui-trainer: error: fit: run_dir: {tmp_path / 'a'} already holds a run with {n} checkpoints;"
                   f' resume="{done.last_path}" continues it, or choose another run_dir for a new one'), err
    assert {p.name: p.read_bytes() for p in (tmp_path / "a").rglob("*") if p.is_file()} == before
    model, opt = objects()
    again = tui_trainer.fit(model, Blobs(32), None, optimizer=opt, loss=nn.CrossEntropyLoss(), epochs=2,
                            run_dir=tmp_path / "a", resume=done.last_path, **QUIET)
    assert again.run_dir == done.run_dir and again.epoch == 2 and again.status == "completed"


def test_a_resume_that_follows_another_monitor_starts_its_best_afresh(tmp_path, one_torch_thread):
    """A best val_acc (max) was loaded as the best val_loss: every val_loss looked worse, best.pt was
    never written again and early stopping ended a run that was improving."""
    model, opt = objects()
    first = tui_trainer.fit(model, Blobs(96), Blobs(24, seed=1), optimizer=opt, loss=nn.CrossEntropyLoss(),
                            metrics=["accuracy"], checkpoint={"monitor": "val_acc"}, epochs=2, batch_size=16,
                            run_dir=tmp_path / "run", **QUIET)
    assert first.monitor == "val_acc" and first.best > 0.3
    model, opt = objects()
    more = tui_trainer.fit(model, Blobs(96), Blobs(24, seed=1), optimizer=opt, loss=nn.CrossEntropyLoss(),
                           metrics=["accuracy"], early_stopping={"enabled": True, "patience": 1}, epochs=3,
                           batch_size=16, run_dir=tmp_path / "run", resume=first.last_path, **QUIET)
    assert more.status == "completed" and more.monitor == "val_loss"
    assert more.best == more.metrics["val_loss"], "the one epoch of this run is the best val_loss so far"
    started = [e for e in events(tmp_path / "run") if e["kind"] == "RunStarted"][-1]
    assert ("checkpoint.monitor is val_loss (min) and " + first.last_path + " followed val_acc (max): its best"
            " and its epochs without improvement start afresh") in started["warnings"]
    assert torch.load(more.best_path, weights_only=True)["epoch"] == 3


SCORES: list[float] = []  # what `scripted` says, epoch after epoch


def scripted(outputs, targets):
    """A user's metric whose values the test chooses."""
    return torch.tensor(SCORES[0])


def test_a_resume_that_sets_no_new_best_still_names_the_best_checkpoint(tmp_path, one_torch_thread):
    """Its end named no best.pt (best_path None), though the best it went on from is in one."""
    model, opt = objects()
    args = dict(loss=nn.CrossEntropyLoss(), metrics=[scripted], checkpoint={"monitor": "val_scripted", "mode": "max"},
                batch_size=16, run_dir=tmp_path / "run", **QUIET)
    SCORES[:] = [0.9]
    first = tui_trainer.fit(model, Blobs(32), Blobs(16, seed=1), optimizer=opt, epochs=1, **args)
    assert first.best == pytest.approx(0.9) and first.best_path is not None
    SCORES[:] = [0.1]  # worse: no new best
    model, opt = objects()
    more = tui_trainer.fit(model, Blobs(32), Blobs(16, seed=1), optimizer=opt, epochs=2, resume=first.last_path,
                           **args)
    assert more.epoch == 2 and more.best == pytest.approx(0.9)
    assert more.best_path == first.best_path


def test_a_metric_function_of_the_users_module_is_a_metric(tmp_path, one_torch_thread):
    model, opt = objects()
    result = tui_trainer.fit(model, Blobs(96), Blobs(24, seed=1), optimizer=opt, loss=nn.CrossEntropyLoss(),
                             metrics=[mean_confidence], checkpoint={"monitor": "val_mean_confidence"}, epochs=1,
                             batch_size=16, run_dir=tmp_path / "run", **QUIET)
    assert result.monitor == "val_mean_confidence"
    assert 0.0 < result.metrics["val_mean_confidence"] <= 1.0


def mean_confidence(outputs, targets):
    """A user's metric: the mean top softmax probability (higher is better)."""
    return outputs.softmax(1).max(1).values.mean()


mean_confidence.mode = "max"


@pytest.mark.timeout(240)
def test_fit_in_a_real_terminal_is_the_monitor_with_its_keys(tmp_path):
    """examples/fit_custom.py in tmux: the same app as a preset run; l, s and q act on the user's objects."""
    import sys

    from tests.integration.test_e2e_tmux import Tmux

    example = Path(__file__).resolve().parents[2] / "examples" / "fit_custom.py"
    tty = Tmux("tui-trainer-fit", f"OMP_NUM_THREADS=1 {sys.executable} {example} --epochs 5000", cwd=tmp_path)
    try:
        screen = tty.wait_for("RUNNING", limit_s=90)
        assert "digits-custom" in screen and "Layers" in screen and "features" in screen
        tty.keys("l")
        tty.wait_for("LR ×0.5 by hand")
        tty.keys("s")
        import time

        deadline = time.monotonic() + 60  # a hang guard (the log pane scrolls past the line quickly)
        while not list(tmp_path.glob("runs/*/checkpoints/manual-step-*.pt")) and time.monotonic() < deadline:
            time.sleep(0.1)
        tty.keys("q")
        tty.wait_for("q or Enter to leave")
        tty.keys("q")
        screen = tty.wait_for("EXIT=0")
        assert "stopped: best val_loss" in screen  # the script's own line after fit returned its Result
    finally:
        tty.close()
    (run,) = list((tmp_path / "runs").iterdir())
    assert list((run / "checkpoints").glob("manual-step-*.pt"))
    last = torch.load(run / "checkpoints" / "last.pt", weights_only=True)
    assert last["schedule"]["manual_factor"] == 0.5


def test_fit_under_torchrun_trains_every_rank_alike(tmp_path):
    """The user's script started by torchrun: fit on 2 ranks (gloo), each with its shard of the
    Datasets' seeded batches (8 per rank: 16 per step), one run directory written by rank 0."""
    from tests.helpers import ranks

    result = ranks.launch(ranks.fit_run, str(tmp_path / "run"))
    assert result[0]["status"] == result[1]["status"] == "completed"
    assert result[0]["step"] == result[1]["step"] == 12  # 96 samples / 16 per step x 2 epochs
    for name, value in result[0]["state"].items():
        assert torch.equal(value, result[1]["state"][name]), name
    assert result[0]["metrics"]["val_loss"] == result[1]["metrics"]["val_loss"]
    assert [e["kind"] for e in events(tmp_path / "run")].count("RunStarted") == 1
    # every rank's Result names the files rank 0 wrote: a script that loads result.best_path after
    # fit (to test the best model) runs on every rank
    for key in ("run_dir", "best_path", "last_path", "best"):
        assert result[0][key] == result[1][key], (key, result[0][key], result[1][key])
    assert result[1]["best_path"].endswith("checkpoints/best.pt") and Path(result[1]["best_path"]).is_file()
    assert Path(result[1]["last_path"]).is_file()


def chatty_step(model, batch, loss_fn):
    """A user's step that prints (as people debug)."""
    x, y = batch
    out = model(x)
    print(f"batch of {len(y)}, first target {int(y[0])}")
    return {"loss": loss_fn(out, y), "outputs": out, "targets": y}


def test_what_the_users_code_prints_goes_to_the_log_not_over_the_screen(tmp_path, capsys, one_torch_thread):
    model, opt = objects()
    tui_trainer.fit(model, Blobs(32), None, optimizer=opt, loss=nn.CrossEntropyLoss(), step=chatty_step, epochs=1,
                    batch_size=16, run_dir=tmp_path / "run", **QUIET)
    printed = [e for e in events(tmp_path / "run") if e["kind"] == "Printed"]
    assert len(printed) == 2  # one per training step (the start-up check's print comes before the run)
    assert all(e["text"].startswith("batch of 16, first target ") and e["stream"] == "stdout" for e in printed)
    out = capsys.readouterr().out
    assert "batch of 16" in out  # headless: as a line among the run's lines
    import sys

    assert not type(sys.stdout).__name__ == "LineStream"  # the streams are back


def test_a_run_dir_that_is_a_file_is_named_as_fit_spells_it(tmp_path, capsys):
    """It said 'another run just made afile; start again, or give --run-dir' (fit has no --run-dir)."""
    (tmp_path / "afile").write_text("mine")
    err = _bad(capsys, run_dir=tmp_path / "afile")
    assert err == (f"tui-trainer: error: fit: run_dir: {tmp_path / 'afile'} is a file, not a directory; choose"
                   " another run_dir")
    assert (tmp_path / "afile").read_text() == "mine"


def test_the_default_name_is_the_calling_scripts(tmp_path, monkeypatch, one_torch_thread):
    """Every script's runs were runs/fit-*, so resume="auto" in one script took another's run."""
    monkeypatch.chdir(tmp_path)
    model, opt = objects()
    result = tui_trainer.fit(model, Blobs(32), None, optimizer=opt, loss=nn.CrossEntropyLoss(), epochs=1, **QUIET)
    assert Path(result.run_dir).name.startswith("test_fit-"), result.run_dir


def test_a_presets_object_keys_that_fit_replaces_are_named_and_not_recorded(tmp_path, one_torch_thread):
    """They were dropped without a word, and config.toml still said [model.kwargs] hidden = 512."""
    preset = tmp_path / "p.toml"
    preset.write_text('[model]\narch = "resnet18"\nkwargs = { hidden = 512 }\n[optimizer]\nname = "Adam"\nlr = 0.001\n'
                      '[train]\nepochs = 1\n', encoding="utf-8")
    model, opt = objects()
    result = tui_trainer.fit(model, Blobs(32), None, optimizer=opt, loss=nn.CrossEntropyLoss(), preset=preset,
                             run_dir=tmp_path / "run", **QUIET)
    assert result.status == "completed"
    started = next(e for e in events(tmp_path / "run") if e["kind"] == "RunStarted")
    assert f"{preset}: [model], [optimizer] not used: fit trains the objects you pass (their classes are what" \
           " config.toml records)" in started["warnings"], started["warnings"]
    recorded = (tmp_path / "run" / "config.toml").read_text()
    assert "hidden" not in recorded and "Adam" not in recorded and 'arch = "python:' in recorded


class AsDicts(Blobs):
    def __getitem__(self, i: int):
        x, y = super().__getitem__(i)
        return {"x": x, "y": y}


def test_dict_batches_without_a_step_are_told_to_pass_step_in_fit_words(tmp_path, capsys):
    err = _bad(capsys, train_data=AsDicts(32), run_dir=tmp_path / "a")
    assert err.startswith("tui-trainer: error: fit: step: the default step takes (input, target) batches; these"
                          " batches are dict(x: ") and err.endswith("write a step for them: pass step=fn, a function"
                                                                    " (model, batch, loss_fn) -> loss (see the README)"), err


def test_a_dataloader_counts_samples_with_its_own_batch_size(tmp_path, capsys, one_torch_thread):
    """samples/s, config.toml and RunStarted took fit's default batch_size (64) for a loader of 16."""
    model, opt = objects()
    result = tui_trainer.fit(model, DataLoader(Blobs(64), batch_size=16), None, optimizer=opt,
                             loss=nn.CrossEntropyLoss(), epochs=1, run_dir=tmp_path / "run", **QUIET)
    assert result.status == "completed" and result.step == 4
    started = next(e for e in events(tmp_path / "run") if e["kind"] == "RunStarted")
    assert started["batch_size"] == 16 and "batch_size = 16" in (tmp_path / "run" / "config.toml").read_text()
    err = _bad(capsys, train_data=DataLoader(Blobs(64), batch_size=16), batch_size=32, run_dir=tmp_path / "b")
    assert err == ("tui-trainer: error: fit: batch_size: is 32, but train_data is a DataLoader that makes batches of"
                   " 16; leave batch_size out (a DataLoader keeps its own)"), err


def test_a_one_cycle_sized_for_more_steps_than_the_run_makes_is_a_warning(tmp_path, one_torch_thread):
    model, opt = objects()  # 100 samples, batch 32: len(loader) 4, but fit makes 3 steps an epoch
    long = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.5, steps_per_epoch=4, epochs=2)
    result = tui_trainer.fit(model, Blobs(100), None, optimizer=opt, loss=nn.CrossEntropyLoss(), scheduler=long,
                             epochs=2, batch_size=32, run_dir=tmp_path / "run", **QUIET)
    assert result.status == "completed" and result.step == 6
    warnings = [e["message"] for e in events(tmp_path / "run") if e["kind"] == "RunWarning"]
    assert ("scheduler: OneCycleLR is sized for 8 steps and the run makes 6 (3 an epoch: a last partial batch is"
            " dropped), so the run ends before its annealing does; give it total_steps=6") in warnings, warnings


def test_every_epochs_0_still_ends_a_completed_run_with_a_last_pt_to_resume(tmp_path, one_torch_thread):
    """A best.pt at the last epoch's end counted as the run's save: no last.pt, and resume="auto" found none."""
    model, opt = objects()
    result = tui_trainer.fit(model, Blobs(64), Blobs(32, seed=1), optimizer=opt, loss=nn.CrossEntropyLoss(),
                             epochs=2, batch_size=16, every_epochs=0, name="e0", run_dir=tmp_path / "run", **QUIET)
    ckpts = tmp_path / "run" / "checkpoints"
    assert result.last_path == str(ckpts / "last.pt") and (ckpts / "last.pt").is_file()
    assert not any(p.name.startswith("epoch-") for p in ckpts.iterdir())
    assert torch.load(ckpts / "last.pt", weights_only=True)["step"] == 8


def test_a_report_emitted_after_the_epochs_scheduler_step_shows_the_lr_its_steps_trained_at(tmp_path,
                                                                                           one_torch_thread):
    """Losses left to the run's last report (paced) were shown with the LR after the final scheduler.step()."""
    model, opt = objects(lr=0.1)
    sched = torch.optim.lr_scheduler.StepLR(opt, 1, 0.5)
    result = tui_trainer.fit(model, Blobs(64), None, optimizer=opt, loss=nn.CrossEntropyLoss(), scheduler=sched,
                             epochs=2, batch_size=16, run_dir=tmp_path / "run", ui=False, log_every=1,
                             log_min_interval_s=60)
    assert result.status == "completed"
    reports = [e for e in events(tmp_path / "run") if e["kind"] == "StepReport"]
    assert reports[-1]["step"] == 8 and reports[-1]["lrs"] == [0.05], reports[-1]  # epoch 2's, not 0.025
