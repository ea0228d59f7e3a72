"""Dist.go_alone: a rank that failed on its own calls no collective again (the others are elsewhere
in the loop; a collective it alone entered would block it or pair with another one). No process
group exists here, so any collective call would raise."""

from __future__ import annotations

import pytest
import torch

from tui_trainer.engine.commands import ScaleLr
from tui_trainer.engine.distributed import Dist


def test_a_rank_alone_keeps_its_own_sums_and_commands():
    d = Dist(rank=1, world=2)
    d.go_alone()
    t = torch.tensor([1.5, 2.0])
    d.sum_([t])
    assert t.tolist() == [1.5, 2.0]
    cmds = [ScaleLr(0.5)]
    assert d.share(cmds) == cmds
    work, out = d.gather_started(t)
    assert work is None and out is t, "a gather alone is this rank's own tensor"
    assert d.gather_(t) is t


def test_a_rank_not_alone_would_reach_for_the_process_group():
    with pytest.raises((RuntimeError, ValueError)):
        Dist(rank=1, world=2).sum_([torch.tensor([1.0])])
    with pytest.raises((RuntimeError, ValueError)):
        Dist(rank=1, world=2).gather_(torch.tensor([1.0]))


def test_a_rank_that_failed_alone_still_writes_its_emergency_checkpoint(tmp_path):
    """Rank 0 of 2 fails with unreported losses: its emergency save reports them first, and that
    report must not reach for the other rank (here: no process group at all, so it would raise and
    the checkpoint would be lost)."""
    from tests.helpers.user_code import write_preset
    from tui_trainer.engine import endings
    from tui_trainer.engine.events import CheckpointSaved, StepReport
    from tui_trainer.run.launch import prepare

    events = []
    session = prepare(write_preset(tmp_path / "p.toml", train={"epochs": 1, "log_every": 100}), [],
                      run_dir=tmp_path / "run", sinks=[events.append])
    t = session.trainer
    batch = next(iter(t.parts.data.train))
    t._step(batch)
    t._step(batch)  # two losses not reported yet
    expected = [x.item() for x in t._pending]
    t.dist = Dist(rank=0, world=2)  # as if a second rank existed (its collectives would need it)
    try:
        failed = endings.fail(t, RuntimeError("boom on this rank alone"))
    finally:
        session.close()
    assert failed.emergency_path and (tmp_path / "run" / "checkpoints" / "last.pt").is_file()
    (report,) = [e for e in events if isinstance(e, StepReport)]
    assert list(report.losses) == pytest.approx(expected)  # this rank's own losses, not halved
    assert any(isinstance(e, CheckpointSaved) for e in events)


def test_rank_0_syncs_about_every_100_ms_and_on_the_epochs_end(tmp_path):
    """The steps to the next sync that rank 0 sends with each one: a fast step syncs every many
    steps (a collective is not paid per step), a slow one every step; the syncs are spread so that
    one lands on the epoch's last step; with log_min_interval_s = 0, on every multiple of log_every."""
    import time

    from tests.helpers.user_code import write_preset
    from tui_trainer.engine.trainer import MAX_SYNC_EVERY, SYNC_EVERY_S
    from tui_trainer.run.launch import prepare

    session = prepare(write_preset(tmp_path / "p.toml", train={"log_min_interval_s": 0.05, "log_every": 10}), [],
                      run_dir=tmp_path / "run")
    t = session.trainer
    try:
        def every(steps: int, seconds: float, in_epoch: int = 0, per_epoch: int = 10**6) -> int:
            t.parts.steps_per_epoch, t.batch_in_epoch, t.total_steps = per_epoch, in_epoch, 10**7
            t._synced_step, t._synced_t = t.step - steps, time.monotonic() - seconds
            return t._sync_every()

        t.step = 100
        fast = int(SYNC_EVERY_S / 0.001)
        assert fast - 5 <= every(10, 10 * 0.001) <= fast  # 1 ms steps: ~100
        assert every(10, 10 * 0.00001) == MAX_SYNC_EVERY  # capped
        assert every(1, 0.2) == 1  # 200 ms steps: every step
        pace = 0.004  # 4 ms steps: ~25 steps to 100 ms
        assert every(10, 10 * pace, in_epoch=0, per_epoch=28) == 28  # one sync, on the epoch's last step
        assert every(10, 10 * pace, in_epoch=28, per_epoch=28) == 28  # at an epoch's end: the next one's
        assert every(10, 10 * pace, in_epoch=40, per_epoch=100) == 30  # 60 left: two syncs of 30
        t._synced_step, t._synced_t = t.step - 10, time.monotonic() - 10 * pace
        t.step, t.log_min_s = 103, 0.0
        assert every(10, 10 * pace) == 7  # exact reports: the next multiple of log_every

        def ahead(steps: int, seconds: float, in_epoch: int, per_epoch: int) -> int:
            """Asked before the step's backward (a sync started early): as if after the step."""
            t.step -= 1
            t.parts.steps_per_epoch, t.batch_in_epoch, t.total_steps = per_epoch, in_epoch - 1, 10**7
            t._synced_step, t._synced_t = t.step + 1 - steps, time.monotonic() - seconds
            try:
                return t._sync_every(ahead=1)
            finally:
                t.step += 1

        t.log_min_s = 0.05
        for in_epoch, per_epoch in ((28, 28), (40, 100), (13, 28)):
            assert ahead(10, 10 * pace, in_epoch, per_epoch) == every(10, 10 * pace, in_epoch, per_epoch)
        t.log_min_s = 0.0
        assert ahead(10, 10 * pace, 3, 100) == every(10, 10 * pace, 3, 100) == 7
    finally:
        session.close()
