"""Resume continues exactly where the run stopped: a run stopped at step k and resumed ends with
the same weights, optimizer state, BatchNorm statistics and validation numbers (torch.equal, ==)
as the run that never stopped. The tiny preset here has dropout, augmentation, a warm-up into an
epoch schedule and a manual LR change: every source of state a resume must carry."""

from __future__ import annotations

import pytest
import torch

from tests.conftest import ONE_THREAD_ENV, run_cli
from tests.helpers.engine import At, run
from tui_trainer.engine.commands import ScaleLr, SetTrainable, Stop
from tui_trainer.engine.events import EpochEnd, RunStarted, StepReport
from tui_trainer.errors import UserError
from tui_trainer.run.rundir import read_events

pytestmark = pytest.mark.usefixtures("one_torch_thread")

EXTRA = """
[scheduler]
name = "StepLR"
step_size = 1
gamma = 0.5
warmup_steps = 4
"""
OVERRIDES = ("train.log_every=1", "train.epochs=3", "data.augment=true")


def commands(stop_at: int | None = None, freeze: bool = False) -> At:
    plan: dict = {2: [ScaleLr(0.5)]}
    if freeze:
        plan[2].append(SetTrainable(("0",), False))
    if stop_at is not None:
        plan.setdefault(stop_at, []).append(Stop(reason="test"))
    return At(plan)


def assert_same_state(a, b) -> None:
    sa, sb = a.session.trainer.state_dict(), b.session.trainer.state_dict()
    for key in ("step", "epoch", "batch_in_epoch", "trainable", "schedule"):
        assert sa[key] == sb[key], key
    for name, tensor in sa["model"].items():
        assert torch.equal(tensor, sb["model"][name]), name
    for pid, state in sa["optimizer"]["state"].items():
        for key, value in state.items():
            assert torch.equal(value, sb["optimizer"]["state"][pid][key]), (pid, key)
    assert sa["optimizer"]["param_groups"] == sb["optimizer"]["param_groups"]


def epoch_numbers(events) -> list[tuple]:
    return [(e.epoch, e.step, e.train_loss, e.val_loss, e.val_acc) for e in events if isinstance(e, EpochEnd)]


@pytest.fixture
def straight(tiny_preset, tmp_path):
    """The reference: the same run, never stopped."""
    preset = tiny_preset(EXTRA)

    def make(freeze: bool = False):
        return run(preset, *OVERRIDES, callbacks=[commands(freeze=freeze)], run_dir=tmp_path / f"straight-{freeze}")

    return preset, make


# Stop mid-epoch, after the last step of an epoch (its validation then runs after the resume),
# and in the last epoch.
@pytest.mark.parametrize("stop_at", [3, 7, 16])
def test_stop_and_resume_equals_the_uninterrupted_run(stop_at, straight, tmp_path):
    preset, make = straight
    reference = make()
    first = run(preset, *OVERRIDES, callbacks=[commands(stop_at)], run_dir=tmp_path / "a")
    assert first.final.status == "stopped" and first.final.step == stop_at
    last = tmp_path / "a" / "checkpoints" / "last.pt"
    assert first.final.last_path == str(last)

    second = run(preset, *OVERRIDES, resume=str(last))
    started = second.of(RunStarted)[0]
    assert (started.start_step, started.resumed_from) == (stop_at, str(last))
    assert started.start_epoch == 1 + stop_at // 7 - (1 if stop_at % 7 == 0 else 0)
    assert started.manual_factor == 0.5, "the manual LR factor survives the resume"
    assert second.of(StepReport)[0].first_step == stop_at + 1
    assert second.final.status == "completed" and second.final.step == 21

    assert_same_state(second, reference)
    # The epochs that ended after the resume report what the straight run reported, exactly.
    assert epoch_numbers(first.events) + epoch_numbers(second.events) == epoch_numbers(reference.events)
    # The resumed run appends to the run directory it came from: one history.
    assert second.session.run_dir.path == tmp_path / "a"


def test_hand_frozen_layers_stay_frozen_after_resume(straight, tmp_path):
    preset, make = straight
    reference = make(freeze=True)
    run(preset, *OVERRIDES, callbacks=[commands(stop_at=5, freeze=True)], run_dir=tmp_path / "a")
    frozen_at_stop = {n: p.clone() for n, p in torch.load(tmp_path / "a/checkpoints/last.pt",
                                                             weights_only=True)["model"].items()}
    second = run(preset, *OVERRIDES, resume=str(tmp_path / "a/checkpoints/last.pt"))
    started = second.of(RunStarted)[0]
    rows = [row.name for row in started.layers]
    assert started.trainable[rows.index("0")] is False
    for name, param in second.model.named_parameters():
        assert param.requires_grad is not name.startswith("0."), name
        if name.startswith("0."):
            assert torch.equal(param, frozen_at_stop[name]), name
    assert_same_state(second, reference)


def test_resume_auto_through_the_cli(tiny_preset, tmp_path):
    """A max_steps run stopped mid-epoch, then `--resume auto` (the newest last.pt of this preset's
    runs) finishes it; --resume PATH is the same code path as `resume=` in the tests above."""
    preset = tiny_preset(EXTRA)
    args = [str(preset), "--no-ui", *[f"--set={o}" for o in OVERRIDES]]
    first = run_cli(*args, "--set", "train.max_steps=5", cwd=tmp_path, env_extra=ONE_THREAD_ENV)
    assert first.returncode == 0, first.stderr
    (run_dir,) = (tmp_path / "runs").glob("tiny-*")
    second = run_cli(*args, "--resume", "auto", cwd=tmp_path, env_extra=ONE_THREAD_ENV)
    assert second.returncode == 0, second.stderr
    last = run_dir / "checkpoints" / "last.pt"
    assert f"resumed from runs/{run_dir.name}/checkpoints/last.pt at step 5 (epoch 1)" in second.stdout
    assert list((tmp_path / "runs").iterdir()) == [run_dir], "resuming continues the same run directory"

    # One history in events.jsonl: two runs, the steps follow on without a gap or a repeat.
    events = read_events(run_dir / "events.jsonl")
    assert [e.start_step for e in events if isinstance(e, RunStarted)] == [0, 5]
    assert [e.step for e in events if isinstance(e, StepReport)] == list(range(1, 22))
    assert [e.epoch for e in events if isinstance(e, EpochEnd)] == [1, 2, 3]

    # The same weights as one straight run in this process.
    reference = run(preset, *OVERRIDES, run_dir=tmp_path / "straight")
    state = torch.load(last, weights_only=True)
    assert state["step"] == 21
    for name, tensor in reference.model.state_dict().items():
        assert torch.equal(state["model"][name], tensor), name


def test_a_checkpoint_that_does_not_fit_changes_nothing(tiny_preset, tmp_path):
    """Resuming with a preset whose model or param groups differ is bad input: one line, and the run
    directory it came from is left as it was (its config.toml still describes the run)."""
    preset = tiny_preset()
    run(preset, "train.epochs=1", run_dir=tmp_path / "a")
    run_dir = tmp_path / "a"
    before = {p.name: p.read_bytes() for p in run_dir.iterdir() if p.is_file()}
    last = run_dir / "checkpoints" / "last.pt"
    cases = {
        "model.kwargs.width=8": f"--resume: {last} is from another model (size mismatch for 0.0.weight: copying a"
                                " param with shape torch.Size([4, 3, 3, 3]) from checkpoint, the shape in current"
                                " model is torch.Size([8, 3, 3, 3]).); resume with the model it was trained with",
        'optimizer.groups=[{params=["6"], lr=0.1}]': f"--resume: {last}: its optimizer state does not fit this"
                                                     " optimizer or its param groups (loaded state dict has a different"
                                                     " number of parameter groups); resume with the optimizer and"
                                                     " param groups it was trained with",
    }
    for override, message in cases.items():
        with pytest.raises(UserError) as info:
            run(preset, override, resume=str(last))
        assert str(info.value) == message
        assert {p.name: p.read_bytes() for p in run_dir.iterdir() if p.is_file()} == before
    # Nor does a fresh --run-dir appear for a resume that cannot start.
    with pytest.raises(UserError):
        run(preset, "model.kwargs.width=8", resume=str(last), run_dir=tmp_path / "b")
    assert not (tmp_path / "b").exists()


def test_per_step_schedule_resumes_exactly(tiny_preset, tmp_path):
    """OneCycleLR stepped every batch (its own step counter) with AdamW (its own step counts)."""
    preset = tiny_preset("""
        [scheduler]
        name = "OneCycleLR"
        interval = "step"
    """)
    preset.write_text(preset.read_text().replace('name = "SGD"\nlr = 0.05\nmomentum = 0.9',
                                                 'name = "AdamW"\nlr = 0.01'))
    reference = run(preset, *OVERRIDES, run_dir=tmp_path / "straight")
    run(preset, *OVERRIDES, callbacks=[At({10: Stop()})], run_dir=tmp_path / "a")
    second = run(preset, *OVERRIDES, resume=str(tmp_path / "a/checkpoints/last.pt"))
    assert second.of(RunStarted)[0].start_step == 10
    assert_same_state(second, reference)


def test_ls_shows_the_length_a_resumed_run_was_given(tiny_preset, tmp_path):
    """A run resumed into its own directory with more epochs: `ls` counts against the new length
    (the latest RunStarted), and lists the run by when it first started."""
    from tui_trainer.run.catalog import list_runs

    preset, run_dir = tiny_preset(), tmp_path / "runs" / "a"
    first = run(preset, "train.epochs=1", run_dir=run_dir)
    second = run(preset, "train.epochs=2", resume=str(run_dir / "checkpoints" / "last.pt"), run_dir=run_dir)
    assert first.final.exit_code == second.final.exit_code == 0
    starts = [e for e in read_events(run_dir / "events.jsonl") if isinstance(e, RunStarted)]
    assert [s.epochs for s in starts] == [1, 2]
    [summary] = list_runs(tmp_path / "runs")
    assert (summary.state, summary.epoch, summary.epochs) == ("completed", 2, 2)
    assert summary.step == summary.total_steps == starts[1].total_steps == 2 * starts[0].total_steps
    assert summary.started == starts[0].time
