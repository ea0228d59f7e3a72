"""Exact resume on CPU. A run stopped mid-epoch by a real signal and resumed with
`--resume` ends bit-identical to the same run done in one go: parameters, optimizer state, LR
schedule state, the loss of every step (from events.jsonl) and the validation results.

Shuffling is always on; the first case adds DataLoader workers, augmentation, a layer frozen by
hand and a manual LR cut before the stop (both must survive the resume); the second stops twice
(SIGTERM, then SIGINT) at steps that are not report boundaries.
"""

from __future__ import annotations

import pytest

from tests.helpers.runs import (
    assert_exactly_equal,
    load_checkpoint,
    losses_by_step,
    of_kind,
    read_events,
    write_preset,
)

TOTAL = 21  # 3 epochs x 7 steps


def _run(fork_server, cwd, args, expect: int) -> None:
    run = fork_server.start(args, cwd)
    try:
        code = run.wait(timeout=300)
    finally:
        run.close()
    assert code == expect, run.text[-4000:]


def _compare(straight, resumed) -> None:
    a, b = load_checkpoint(straight / "checkpoints" / "last.pt"), load_checkpoint(resumed / "checkpoints" / "last.pt")
    assert a["step"] == b["step"] == TOTAL
    for key in ("model", "optimizer", "schedule", "trainable", "epoch", "batch_in_epoch"):
        assert_exactly_equal(a[key], b[key], key)
    ea, eb = read_events(straight), read_events(resumed)
    la, lb = losses_by_step(ea), losses_by_step(eb)
    assert sorted(la) == sorted(lb) == list(range(1, TOTAL + 1)), "a step's loss is missing"
    assert la == lb  # exact floats, every step
    va = [(e["epoch"], e["val_loss"], e["val_acc"]) for e in of_kind(ea, "EpochEnd")]
    vb = [(e["epoch"], e["val_loss"], e["val_acc"]) for e in of_kind(eb, "EpochEnd")]
    assert va == vb
    assert_exactly_equal(load_checkpoint(straight / "checkpoints" / "best.pt")["model"],
                         load_checkpoint(resumed / "checkpoints" / "best.pt")["model"], "best")


def test_workers_augmentation_freeze_and_lr_cut_survive_a_ctrl_c(fork_server, tmp_path):
    script = {"target": "tests.helpers.callbacks:Script", "freeze_at": 3, "freeze": "0", "scale_at": 5,
              "factor": 0.5}
    preset = write_preset(tmp_path / "p.toml", data={"num_workers": 2, "augment": True},
                          train={"epochs": 3, "log_every": 1}, callbacks=[script])
    _run(fork_server, tmp_path, [preset, "--no-ui", "--run-dir", "straight"], 0)
    # the same run, interrupted at step 10 (mid-epoch 2) by SIGINT, then resumed
    _run(fork_server, tmp_path, [preset, "--no-ui", "--run-dir", "stopped", "--set", "callbacks.0.signal_at=10"], 0)
    events = read_events(tmp_path / "stopped")
    assert of_kind(events, "Finished")[-1]["step"] == 10
    _run(fork_server, tmp_path, [preset, "--no-ui", "--resume", "stopped/checkpoints/last.pt"], 0)
    _compare(tmp_path / "straight", tmp_path / "stopped")

    events = read_events(tmp_path / "stopped")
    resumed = of_kind(events, "RunStarted")[-1]
    assert resumed["start_step"] == 10 and resumed["resumed_from"].endswith("last.pt")
    names = [row["name"] for row in resumed["layers"]]
    assert resumed["trainable"][names.index("0")] is False, "a layer frozen by hand must stay frozen"
    assert resumed["manual_factor"] == 0.5 and resumed["lrs"] == [0.025], "the LR cut must survive"
    assert {tuple(e["lrs"]) for e in of_kind(events, "StepReport") if e["step"] > 10} == {(0.025,)}
    final = load_checkpoint(tmp_path / "stopped" / "checkpoints" / "last.pt")
    frozen = [k for k in final["trainable"] if k.startswith("0.")]
    assert frozen and not any(final["trainable"][k] for k in frozen)
    at_epoch_2 = load_checkpoint(tmp_path / "stopped" / "checkpoints" / "epoch-0002.pt")
    for key in ("0.0.weight", "0.1.weight", "0.1.bias"):  # frozen at step 3: never moved again
        assert_exactly_equal(at_epoch_2["model"][key], final["model"][key], key)


def test_two_stops_off_report_boundaries(fork_server, tmp_path):
    """SIGTERM at step 4 (exit 143), resume, SIGINT at step 11 (exit 0), resume, finish; log_every
    = 4, so both stops fall between reports (the pending losses must be flushed, not lost)."""
    arch = {"arch": "tests.helpers.models:misbehaving_cnn", "kwargs": {"plan": {}}}
    preset = write_preset(tmp_path / "p.toml", model=arch, train={"epochs": 3, "log_every": 4})
    _run(fork_server, tmp_path, [preset, "--no-ui", "--run-dir", "straight"], 0)
    # the model sends the signal from inside the forward pass of its n-th step in this process
    _run(fork_server, tmp_path, [preset, "--no-ui", "--run-dir", "stopped",
                                 "--set", 'model.kwargs.plan={"4" = "SIGTERM"}'], 143)
    _run(fork_server, tmp_path, [preset, "--no-ui", "--resume", "stopped/checkpoints/last.pt",
                                 "--set", 'model.kwargs.plan={"7" = "SIGINT"}'], 0)
    _run(fork_server, tmp_path, [preset, "--no-ui", "--resume", "stopped/checkpoints/last.pt"], 0)
    events = read_events(tmp_path / "stopped")
    assert [e["step"] for e in of_kind(events, "Finished")] == [4, 11, TOTAL]
    assert [e["start_step"] for e in of_kind(events, "RunStarted")] == [0, 4, 11]
    _compare(tmp_path / "straight", tmp_path / "stopped")


@pytest.mark.parametrize("workers", [0, 2])
def test_batch_order_is_a_function_of_seed_and_epoch(workers):
    """The mechanism under the resume, checked directly: skipping k batches of an epoch yields
    exactly the batches k.. of the full epoch, samples and augmentations alike."""
    import torch

    from tui_trainer.parts.data import make_loaders
    from tui_trainer.config import DataSection

    cfg = DataSection(dataset="digits", image_size=12, batch_size=8, limit=64, num_workers=workers, augment=True)
    full = make_loaders(cfg, 3, torch.device("cpu"))
    full.train_batches.set_epoch(1, 0)
    whole = list(full.train)
    again = make_loaders(cfg, 3, torch.device("cpu"))
    again.train_batches.set_epoch(1, 3)
    tail = list(again.train)
    assert len(tail) == len(whole) - 3
    for (xa, ya), (xb, yb) in zip(whole[3:], tail):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
    full.train_batches.set_epoch(2, 0)
    assert not torch.equal(next(iter(full.train))[0], whole[0][0]), "epochs must differ"
