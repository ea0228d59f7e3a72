"""engine/distributed.py with real processes: 2 ranks on gloo, started by torch's elastic launcher."""

from __future__ import annotations

import pytest

from tests.helpers import ranks

pytestmark = pytest.mark.timeout(120)


def test_commands_of_rank_0_reach_every_rank_at_the_same_step():
    result = ranks.launch(ranks.share_commands, 6, 3)
    (r0, w0, seen0), (r1, w1, seen1) = result[0], result[1]
    assert (r0, r1, w0, w1) == (0, 1, 2, 2)
    assert seen0 == seen1
    assert [step for step, _ in seen0] == [3, 3, 3]
    assert [c["kind"] for _, c in seen0] == ["ScaleLr", "SetTrainable", "Stop"]


def test_sums_are_exact_over_the_ranks():
    result = ranks.launch(ranks.sum_exact)
    assert result[0] == result[1] == [[3.0, 2.0], [30]]


def test_freezing_under_ddp_rebuilds_the_wrapper_and_keeps_the_ranks_identical():
    result = ranks.launch(ranks.freeze_under_ddp)
    assert result[0]["frozen_kept"] and result[1]["frozen_kept"]
    assert result[0]["moved_after_unfreeze"]
    assert result[0]["weights"] == result[1]["weights"]  # every rank the same parameters, bit for bit
