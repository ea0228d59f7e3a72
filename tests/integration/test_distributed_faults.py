"""What goes wrong on one rank only, with real processes (2 ranks, gloo): a stop that enters rank 0
alone, a failure on rank 1 alone, a validation shard that is empty on one rank. None may hang: the
classic multi-GPU deadlock is a collective (a barrier, a reduction) that one rank enters and the
others never reach."""

from __future__ import annotations

import json
import math

import pytest

from tests.conftest import ONE_THREAD_ENV, run_cli

from tests.helpers import ranks
from tests.helpers.user_code import write_preset

pytestmark = pytest.mark.timeout(120)


def test_a_stop_that_enters_rank_0_alone_stops_every_rank_at_the_same_step(tmp_path):
    preset = write_preset(tmp_path / "p.toml", callbacks=[{"target": "tests.helpers.ranks:StopOnRank0", "at": 4}],
                          train={"epochs": 50}, checkpoint={"every_epochs": 0, "save_best": False})
    result = ranks.launch(ranks.train_run, str(preset), str(tmp_path / "run"), [])
    for rank in (0, 1):
        assert result[rank]["finished"] and result[rank]["status"] == "stopped", result[rank]["error"]
    # applied at the next share (rank 0 shares about every 50 ms): the same step on both ranks
    assert result[0]["step"] == result[1]["step"] >= 4
    assert result[0]["weights"] == result[1]["weights"]
    assert (tmp_path / "run" / "checkpoints" / "last.pt").is_file()  # the one final save, by rank 0


def test_a_failure_on_rank_1_alone_ends_both_ranks_without_a_collective_it_alone_enters(tmp_path):
    # log_every 3: the failed rank has unreported losses, whose reduction (before its save) is a
    # collective the other rank, already in the next step's gradient all_reduce, never reaches
    preset = write_preset(tmp_path / "p.toml", step={"fn": "tests.helpers.ranks:step_failing_on_rank_1"},
                          train={"devices": 2, "epochs": 50, "log_every": 3},
                          checkpoint={"every_epochs": 0, "save_best": False})
    proc = run_cli(str(preset), "--no-ui", "--run-dir", str(tmp_path / "run"), cwd=tmp_path,
                   env_extra=ONE_THREAD_ENV, timeout=100)
    assert proc.returncode == 1, proc.stderr[-2000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert "rank 1 of 2 failed (RuntimeError: boom on rank 1 alone)" in last, proc.stderr[-1500:]
    events = [json.loads(line) for line in (tmp_path / "run" / "events.jsonl").read_text().splitlines()]
    assert events[-1]["kind"] == "Failed"  # rank 0 lost its peer and said so
    # its weights were those of its last completed step: the emergency checkpoint is there
    assert events[-1]["emergency_path"] and (tmp_path / "run" / "checkpoints" / "last.pt").is_file()


def test_an_empty_validation_shard_reduces_to_the_one_process_result():
    result = ranks.launch(ranks.evaluate_with_an_empty_shard)
    one = result[0].pop("one")
    assert result[0] == result[1]  # every rank has the global result
    for got, want in ((result[0]["cls"], one["cls"]), (result[0]["reg"], one["reg"])):
        assert got[0] == pytest.approx(want[0], rel=1e-6)
        for key, value in want[-1].items():
            assert value is not None and math.isfinite(value)
            assert got[-1][key] == pytest.approx(value, rel=1e-9), key
