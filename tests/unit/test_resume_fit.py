"""checkpoint.resume_fit: a checkpoint continues exactly only with its global batch (per-rank batch x
accumulate x ranks); another number of ranks with the same global batch is fine, and says so."""

from __future__ import annotations

import pytest

from tui_trainer import config
from tui_trainer.engine.checkpoint import resume_fit
from tui_trainer.errors import UserError


def preset(batch_size: int, accumulate: int = 1) -> config.Preset:
    return config.Preset.model_validate({"name": "p", "data": {"batch_size": batch_size},
                                         "train": {"accumulate": accumulate}})


def test_the_same_global_batch_on_another_number_of_ranks_resumes_with_a_note():
    note = resume_fit({"world": 2, "global_batch": 64}, preset(16), 4, "last.pt")
    assert note.startswith("resumed on 4 ranks from a checkpoint of 2 ranks: the same 64 samples per step")
    assert resume_fit({"world": 2, "global_batch": 64}, preset(32), 2, "last.pt") is None


def test_another_global_batch_is_one_line_that_says_what_would_happen_and_the_fixes():
    with pytest.raises(UserError) as err:
        resume_fit({"world": 2, "global_batch": 64}, preset(32), 4, "runs/a/checkpoints/last.pt")
    text = str(err.value)
    assert text.startswith("--resume: runs/a/checkpoints/last.pt was saved by 2 ranks with 64 samples per step,"
                           " and this run takes 128 (4 ranks x 32)")
    assert "would not continue where it stopped" in text
    assert "set data.batch_size = 16 (keeps 64 per step on 4 ranks)" in text
    assert "run on 2 ranks (train.devices = 2)" in text
    assert 'model.weights = "runs/a/checkpoints/last.pt"' in text
    assert "\n" not in text


def test_a_checkpoint_from_before_ranks_counts_as_one_process_of_its_preset_batch():
    old = {"config": {"data": {"batch_size": 32}, "train": {"accumulate": 2}}}  # no world, no global_batch
    assert resume_fit(old, preset(32, 2), 1, "old.pt") is None
    assert "from a checkpoint of 1 rank" in resume_fit(old, preset(16, 2), 2, "old.pt")
    with pytest.raises(UserError, match="saved by 1 rank with 64 samples per step"):
        resume_fit(old, preset(32, 2), 2, "old.pt")


def test_a_different_epoch_length_on_another_number_of_ranks_is_refused():
    class Parts:
        steps_per_epoch = 3

    assert resume_fit({"world": 1, "global_batch": 32, "steps_per_epoch": 3}, preset(16), 2, "a.pt", Parts()) \
        is not None
    with pytest.raises(UserError, match="saved with 4 steps per epoch and this run makes 3"):
        resume_fit({"world": 1, "global_batch": 32, "steps_per_epoch": 4}, preset(16), 2, "a.pt", Parts())
