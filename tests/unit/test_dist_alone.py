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


def test_a_rank_not_alone_would_reach_for_the_process_group():
    with pytest.raises((RuntimeError, ValueError)):
        Dist(rank=1, world=2).sum_([torch.tensor([1.0])])


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


def test_rank_0_shares_about_every_50_ms_whatever_the_step_time(tmp_path):
    """The interval rank 0 broadcasts with each share: a fast step shares every many steps (the
    broadcast is not paid per step), a slow one every step, a paused run at once."""
    import time

    from tests.helpers.user_code import write_preset
    from tui_trainer.engine.trainer import MAX_SHARE_EVERY, SHARE_EVERY_S
    from tui_trainer.run.launch import prepare

    session = prepare(write_preset(tmp_path / "p.toml"), [], run_dir=tmp_path / "run")
    t = session.trainer
    try:
        def every(steps: int, seconds: float) -> int:
            t._shared_step, t._shared_t = t.step - steps, time.monotonic() - seconds
            return t._share_every()

        t.step = 100
        assert int(SHARE_EVERY_S / 0.001) - 5 <= every(10, 10 * 0.001) <= int(SHARE_EVERY_S / 0.001)  # 1 ms: ~50
        assert every(10, 10 * 0.0001) == MAX_SHARE_EVERY  # capped
        assert every(1, 0.2) == 1  # 200 ms steps: every step
        t._paused = True
        assert every(10, 0.01) == 1
    finally:
        session.close()
