"""SIGKILL at random moments while checkpoints are written; nothing half-written is ever
taken for a checkpoint, and the next start cleans up.

Each trial is the real CLI (`cli.main`) in a forked child of `tests/helpers/killtrials.py` (one
interpreter start-up for all trials), saving a checkpoint every step. Random trials are killed at a
random moment of the checkpointing phase (seeded; the seed is in the test id); hook trials kill the
child at exact points inside a save (half-way through the bytes, before/after the rename, inside the
hard-link alias) so every window of the atomic write is hit on every run, whatever the timing.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from tests.conftest import ROOT, cli_env
from tests.helpers.runs import load_checkpoint, of_kind, read_events, tensors_finite, write_preset

SEED = 20240501
N_RANDOM = 36
WINDOW_S = 0.5  # random kills land this long after the first checkpoint, at most
HOOKS = [(point, nth) for point in ("mid_write", "before_replace", "after_replace", "in_alias") for nth in (1, 4)]
EPOCHS = 40  # far more than a trial lives: every trial is killed mid-run
MORE = 3  # steps the next start trains before it ends (train.max_steps)
TMP = re.compile(r"^\.[\w.-]+\.pt\.\d+\.tmp$")


def _run_trials(trials: list[dict], work: Path) -> list[dict]:
    spec_path, out_path = work / "spec.json", work / "result.json"
    spec_path.write_text(json.dumps({"trials": trials}))
    env = cli_env()
    env["OMP_NUM_THREADS"] = "1"  # one thread per trial: less noise on a shared 2-core box
    subprocess.run([sys.executable, "-m", "tests.helpers.killtrials", str(spec_path), str(out_path)],
                   cwd=ROOT, env=env, check=True, timeout=600)
    return json.loads(out_path.read_text())


@pytest.fixture(scope="module")
def trials(tmp_path_factory):
    """Kill all trials, snapshot what each left, then start each again (resume, or fresh)."""
    # SIGKILL does not need fsync for the data to survive (the page cache outlives the process),
    # so trials run on tmpfs when there is one: fsync is free there and a trial takes ~0.5 s.
    shm = Path("/dev/shm")
    work = Path(tempfile.mkdtemp(prefix="tui-kill-", dir=shm)) if shm.is_dir() and os.access(shm, os.W_OK) \
        else tmp_path_factory.mktemp("kill")
    try:
        yield _trials(work)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _trials(work: Path) -> list[dict]:
    preset = write_preset(work / "tiny.toml", train={"epochs": EPOCHS, "log_every": 1},
                          checkpoint={"every_steps": 1, "every_epochs": 1, "keep_last": 2, "save_best": True})
    rng = random.Random(SEED)
    kills = [{"mode": "time", "after": rng.uniform(0.0, WINDOW_S)} for _ in range(N_RANDOM)]
    kills += [{"mode": "hook", "point": p, "nth": n} for p, n in HOOKS]
    dirs = []
    for i, _ in enumerate(kills):
        d = work / f"trial-{i:02d}"
        d.mkdir()
        dirs.append(d)
    args = [str(preset), "--no-ui", "--run-dir", "run"]
    results = _run_trials([{"cwd": str(d), "args": args, "kill": k} for d, k in zip(dirs, kills)], work)

    left = [_snapshot(d) for d in dirs]
    again = []
    for d, snap in zip(dirs, left):
        last = snap["last_step"]
        resume = ["--resume", "run/checkpoints/last.pt"] if last is not None else []
        again.append({"cwd": str(d), "args": [*args, *resume, "--set", f"train.max_steps={(last or 0) + MORE}"]})
    second = _run_trials(again, work)
    return [dict(dir=d, kill=k, result=r, left=s, again=a, resumed=s["last_step"] is not None)
            for d, k, r, s, a in zip(dirs, kills, results, left, second)]


def _snapshot(d: Path) -> dict:
    """What a killed trial left: names, and the step of every visible checkpoint (loaded safely)."""
    ck = d / "run" / "checkpoints"
    files = sorted(p.name for p in ck.iterdir()) if ck.is_dir() else []
    hidden = [f for f in files if f.startswith(".")]
    steps = {}
    for f in files:
        if not f.startswith("."):
            state = load_checkpoint(ck / f)  # weights_only=True; raises on any damage
            assert tensors_finite(state["model"]), f
            steps[f] = state["step"]
    saved = [e for e in of_kind(read_events(d / "run"), "CheckpointSaved")]
    return {"files": files, "hidden": hidden, "steps": steps, "last_step": steps.get("last.pt"),
            "last_event_step": max((e["step"] for e in saved if "last" in e["tags"]), default=None)}


def test_every_trial_was_killed(trials):
    for t in trials:
        assert t["result"]["signal"] == 9, (t["kill"], t["result"], (t["dir"] / "stderr.txt").read_text()[-2000:])


def test_visible_checkpoints_are_complete_and_temp_files_are_hidden(trials):
    """Every file under a checkpoint name loaded with weights_only=True (in _snapshot); the only
    other files are hidden temp files, which no loader or `--resume auto` looks at."""
    for t in trials:
        left = t["left"]
        for name in left["files"]:
            assert name in left["steps"] or TMP.match(name), (t["kill"], name)
        epochs = [f for f in left["steps"] if f.startswith("epoch-")]
        assert len(epochs) <= 2 + 1, left  # keep_last, plus one written and not yet rotated


def test_newest_checkpoint_is_not_older_than_the_last_reported_save(trials):
    for t in trials:
        left = t["left"]
        if left["last_event_step"] is not None:
            assert left["last_step"] is not None and left["last_step"] >= left["last_event_step"], left


def test_hooks_hit_the_window_they_name(trials):
    for t in trials:
        kill, left = t["kill"], t["left"]
        if kill["mode"] != "hook":
            continue
        if kill["point"] in ("mid_write", "before_replace", "in_alias"):
            assert left["hidden"], (kill, left)  # the kill landed inside a save
        if kill["point"] == "mid_write" and kill["nth"] == 1:
            assert left["last_step"] is None  # nothing complete yet, and nothing pretends to be


def test_random_kills_land_in_the_checkpointing_phase(trials):
    """Not timing-critical: most random kills happen after the first save and before the end."""
    random_trials = [t for t in trials if t["kill"]["mode"] == "time"]
    assert len(random_trials) >= 30
    mid = [t for t in random_trials if t["left"]["last_step"] is not None]
    assert len(mid) >= len(random_trials) // 2, [t["left"]["last_step"] for t in random_trials]
    hit = sum(bool(t["left"]["hidden"]) for t in random_trials)
    print(f"\n{len(random_trials)} random kills: {len(mid)} mid-run, {hit} inside a checkpoint write")


def test_next_start_cleans_temp_files_and_finishes(trials):
    for t in trials:
        d, again = t["dir"], t["again"]
        assert again["code"] == 0, (t["kill"], (d / "stderr.txt").read_text()[-3000:])
        ck = d / "run" / "checkpoints"
        assert not [p for p in ck.iterdir() if p.name.startswith(".")], sorted(ck.iterdir())
        events = read_events(d / "run")
        warned = " ".join(e["message"] for e in of_kind(events, "RunWarning"))
        for name in t["left"]["hidden"]:
            assert name in warned, (name, warned)
        start = t["left"]["last_step"] or 0
        assert of_kind(events, "RunStarted")[-1]["start_step"] == start
        finished = of_kind(events, "Finished")[-1]
        assert finished["status"] == "completed" and finished["step"] == start + MORE
        assert load_checkpoint(ck / "last.pt")["step"] == start + MORE
