"""Checkpoint contents and files: safe loading, everything a resume needs, aliases, atomic writes."""

from __future__ import annotations

import os

import pytest
import torch

from tests.helpers.engine import At, TINY_OPTIMIZER, edit, run
from tui_trainer import config
from tui_trainer.engine import checkpoint
from tui_trainer.engine.commands import SaveCheckpoint, ScaleLr, SetTrainable
from tui_trainer.engine.events import CheckpointSaved, RunWarning
from tui_trainer.errors import UserError

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SCHEDULE = """
[scheduler]
name = "StepLR"
step_size = 1
gamma = 0.5
"""


@pytest.fixture
def finished(tiny_preset, tmp_path):
    """A run with a scheduler, a manual LR change, a frozen block and a manual save."""
    commands = At({3: [ScaleLr(0.5), SetTrainable(("1",), False)], 9: SaveCheckpoint()})
    out = run(tiny_preset(SCHEDULE), "train.log_every=1", "train.epochs=3", callbacks=[commands],
              run_dir=tmp_path / "run")
    assert out.final.status == "completed"
    return out, tmp_path / "run" / "checkpoints"


def test_contents(finished):
    out, ckpt = finished
    state = torch.load(ckpt / "last.pt", weights_only=True)  # plain tensors and containers only
    assert state["format"] == "tui-trainer/1" and state["run_name"] == "tiny"
    assert (state["step"], state["epoch"], state["batch_in_epoch"]) == (21, 3, 0)
    model = out.model.state_dict()
    assert state["model"].keys() == model.keys()
    assert all(torch.equal(state["model"][k], v) for k, v in model.items())
    assert len(state["optimizer"]["state"]) == len(model) - 3 * 3, "SGD momentum buffer of each parameter"
    assert state["optimizer"]["param_groups"][0]["lr"] == pytest.approx(0.05 * 0.5 * 0.5 ** 3)
    schedule = state["schedule"]
    assert schedule["manual_factor"] == 0.5
    assert schedule["scheduler"]["last_epoch"] == 3 and schedule["scheduler"]["gamma"] == 0.5
    assert state["scaler"] is None, "no GradScaler without fp16"
    assert set(state["rng"]) >= {"python", "torch", "numpy"}
    assert torch.is_tensor(state["rng"]["torch"])
    assert state["trainable"] == {n: not n.startswith("1.") for n, _ in out.model.named_parameters()}
    assert state["best"]["mode"] == "min" and state["best"]["epoch"] in (1, 2, 3)
    assert config.from_dict(state["config"]).to_dict() == out.session.preset.to_dict()


def test_files_aliases_and_rotation(finished):
    out, ckpt = finished
    names = sorted(p.name for p in ckpt.iterdir())
    # keep_last = 2 rotates epoch files only; the manual save is kept; no temp file is left.
    assert names == ["best.pt", "epoch-0002.pt", "epoch-0003.pt", "last.pt", "manual-step-00000009.pt"]
    assert os.path.samefile(ckpt / "last.pt", ckpt / "epoch-0003.pt")
    saves = out.of(CheckpointSaved)
    best_epoch = out.final.best_epoch
    best_save = [s for s in saves if "best" in s.tags][-1]
    assert best_save.epoch == best_epoch
    assert torch.load(ckpt / "best.pt", weights_only=True)["step"] == best_epoch * 7
    manual = [s for s in saves if "manual" in s.tags]
    assert [(s.step, s.tags) for s in manual] == [(9, ("manual", "last"))]


def test_manual_save_moves_last(tiny_preset, tmp_path):
    out = run(tiny_preset(), "train.log_every=1", "train.epochs=1", "checkpoint.every_epochs=0",
              "checkpoint.save_best=false", callbacks=[At({4: SaveCheckpoint()})], run_dir=tmp_path / "r")
    ckpt = tmp_path / "r" / "checkpoints"
    # After the manual save the run went on; its end wrote last.pt anew.
    assert sorted(p.name for p in ckpt.iterdir()) == ["last.pt", "manual-step-00000004.pt"]
    assert torch.load(ckpt / "manual-step-00000004.pt", weights_only=True)["step"] == 4
    assert torch.load(ckpt / "last.pt", weights_only=True)["step"] == 7
    assert [s.tags for s in out.of(CheckpointSaved)] == [("manual", "last"), ("final", "last")]


def test_a_temp_file_left_by_a_killed_run_is_removed(tiny_preset, tmp_path):
    ckpt = tmp_path / "r" / "checkpoints"
    ckpt.mkdir(parents=True)
    (ckpt / ".last.pt.4242.tmp").write_bytes(b"half a checkpoint")
    out = run(tiny_preset(), "train.epochs=1", run_dir=tmp_path / "r")
    assert not list(ckpt.glob(".*"))
    assert [e.message for e in out.of(RunWarning)] == [
        "removed an incomplete checkpoint left by a killed run: .last.pt.4242.tmp"]


def test_atomic_save_leaves_the_old_file_when_writing_fails(tmp_path):
    path = tmp_path / "last.pt"
    checkpoint.atomic_save({"format": checkpoint.FORMAT, "step": 1}, path)

    class Unpicklable:
        def __reduce__(self):
            raise RuntimeError("cannot pickle this")

    with pytest.raises(RuntimeError):
        checkpoint.atomic_save({"format": checkpoint.FORMAT, "step": 2, "bad": Unpicklable()}, path)
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]
    assert checkpoint.load(path)["step"] == 1


class NotAllowed:
    pass


def test_a_checkpoint_holding_python_objects_is_refused(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"format": checkpoint.FORMAT, "payload": NotAllowed()}, path)
    with pytest.raises(UserError, match="names Python code that would run when loaded"):
        checkpoint.load(path)


def test_grad_scaler_state_is_saved_and_restored(tiny_preset, tmp_path):
    """fp16 autocast runs on the CPU too, with a GradScaler: its state is part of the checkpoint."""
    out = run(tiny_preset(), 'train.amp="fp16"', "train.epochs=1", run_dir=tmp_path / "a")
    state = torch.load(tmp_path / "a/checkpoints/last.pt", weights_only=True)
    assert state["scaler"]["_growth_tracker"] == 7 and state["scaler"]["scale"] > 0
    resumed = run(tiny_preset(), 'train.amp="fp16"', "train.epochs=2", resume=str(tmp_path / "a/checkpoints/last.pt"))
    assert resumed.session.trainer.scaler.state_dict()["_growth_tracker"] == 14, "it counted on from 7"
    assert out.final.status == resumed.final.status == "completed"


def test_lbfgs_checkpoint_loads_safely_and_resumes_exactly(tiny_preset, tmp_path):
    preset = edit(tiny_preset(), (TINY_OPTIMIZER, 'name = "LBFGS"\nlr = 0.2\nmax_iter = 3\nhistory_size = 5\n'))
    straight = run(preset, "train.log_every=1", run_dir=tmp_path / "straight")
    from tui_trainer.engine.commands import Stop

    run(preset, "train.log_every=1", callbacks=[At({9: Stop()})], run_dir=tmp_path / "a")
    state = torch.load(tmp_path / "a/checkpoints/last.pt", weights_only=True)
    assert state["step"] == 9 and state["optimizer"]["state"][0]["old_dirs"], "the LBFGS history is saved"
    resumed = run(preset, "train.log_every=1", resume=str(tmp_path / "a/checkpoints/last.pt"))
    assert resumed.final.step == 14
    for name, tensor in straight.model.state_dict().items():
        assert torch.equal(resumed.model.state_dict()[name], tensor), name
