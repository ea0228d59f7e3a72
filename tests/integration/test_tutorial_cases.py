"""Techniques from PyTorch tutorials that used to break the start-up checks or the run (issue 12's
list), each end to end through the real engine. The bad-input ones are in
tests/fixtures/bad_presets/ (sample_model_cannot_take, freeze_everything ...)."""

from __future__ import annotations

import pytest

from tests.helpers.engine import run
from tests.helpers.user_code import UC, write_preset
from tui_trainer.engine.events import EpochEnd
from tui_trainer.errors import UserError
from tui_trainer.run.launch import prepare

DIGITS = {"dataset": "digits", "image_size": 8, "batch_size": 32, "limit": 128, "val_fraction": 0.25}


def test_a_view_flatten_model_runs_on_digits(tmp_path):
    # digits' samples are expanded (non-contiguous); the old one-sample check failed on .view
    preset = write_preset(tmp_path / "p.toml", replace=("model", "data"),
                          model={"arch": f"{UC}:ViewFlatten"}, data=DIGITS)
    out = run(preset)
    assert out.final.status == "completed", out.final


def test_the_classic_mlp_runs_as_written_with_flatten_and_one_channel(tmp_path):
    preset = write_preset(tmp_path / "p.toml", replace=("model", "data"), model={"arch": f"{UC}:mlp784"},
                          data={**DIGITS, "image_size": 28, "channels": 1, "flatten": True, "normalize": "none"})
    out = run(preset)
    assert out.final.status == "completed", out.final
    assert out.of(EpochEnd)[-1].val_acc is not None  # class targets: accuracy is measured


def test_freeze_backbone_trains_only_the_new_head(tmp_path):
    preset = write_preset(tmp_path / "p.toml", replace=("model", "data"),
                          model={"arch": "resnet18", "num_classes": 10, "freeze_backbone": True},
                          data={**DIGITS, "image_size": 32}, train={"max_steps": 2, "epochs": 1})
    out = run(preset)
    assert out.final.status == "completed", out.final
    trainable = {n for n, p in out.model.named_parameters() if p.requires_grad}
    assert trainable == {"fc.weight", "fc.bias"}


def test_freeze_everything_then_a_new_head_is_bad_input_before_the_first_step(tmp_path):
    preset = write_preset(tmp_path / "p.toml", replace=("model", "data"),
                          model={"arch": "resnet18", "num_classes": 10, "freeze": [""]}, data=DIGITS)
    with pytest.raises(UserError) as info:
        prepare(preset)
    assert info.value.exit_code == 2 and "nothing is trainable" in str(info.value)
    assert "freeze_backbone" in str(info.value)
    assert not (tmp_path / "runs").exists()
