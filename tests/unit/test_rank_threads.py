"""How many threads the ranks our launcher starts compute with (run/ranks.rank_threads), and how the
start line names a CPU device (parts.device_label): torch alone gives every rank all the cores."""

from __future__ import annotations

import pytest
import torch

from tui_trainer.parts import device_label
from tui_trainer.run.ranks import rank_threads


@pytest.mark.parametrize("n, cores, threads", [(2, 2, 1), (2, 16, 8), (3, 16, 5), (8, 4, 1), (4, 1, 1)])
def test_the_cores_are_shared_out_among_the_ranks(n, cores, threads):
    assert rank_threads(n, {}, cores) == threads


def test_the_users_own_setting_and_one_process_are_left_alone():
    assert rank_threads(2, {"OMP_NUM_THREADS": "3"}, 16) is None
    assert rank_threads(1, {}, 16) is None
    assert rank_threads(2, {"OMP_NUM_THREADS": ""}, 16) == 8  # set but empty: torch ignores it too


def test_a_cpu_device_is_named_with_its_threads(one_torch_thread):
    assert device_label(torch.device("cpu")) == "cpu, 1 thread"
    torch.set_num_threads(2)
    assert device_label(torch.device("cpu")) == "cpu, 2 threads"


def test_more_cpu_ranks_than_cores_is_a_warning_in_the_run(tmp_path, monkeypatch):
    from tests.helpers.user_code import write_preset
    from tui_trainer import config
    from tui_trainer.parts import build

    preset = config.load(write_preset(tmp_path / "p.toml", train={"device": "cpu"}))
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: {0}, raising=False)
    assert build(preset, rank=0, world=2).warnings[-1] == (
        "2 CPU ranks share 1 core here: each waits for the others; 1 (train.devices, or torchrun's --nproc-per-node)"
        " train faster")
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: {0, 1}, raising=False)
    assert not any("CPU ranks" in w for w in build(preset, rank=0, world=2).warnings)
