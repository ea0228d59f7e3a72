"""Bad input -> one line that names the file (or the --set) and the key and says how to fix it,
exit 2, no traceback, nothing written.

The table is tests/fixtures/bad_presets/: one preset per mistake, named after it. Each file says
what is wrong and, in its header, what the user must read:

    # args: --set train.epochs=three      (optional: extra command-line arguments)
    # expect: {file}: train.epochs: ...   (the error after "tui-trainer: error: "; {file} = its path;
                                           a trailing "..." compares a prefix, for lists of names
                                           that grow with torch)

Every case runs twice: through the real CLI in a subprocess, and in-process through
config.load -> parts.check -> launch.prepare.
"""

from __future__ import annotations

import concurrent.futures
import importlib.util
import os
import shlex
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from tests.conftest import ROOT, run_cli
from tui_trainer import config
from tui_trainer.parts import check
from tui_trainer.errors import UserError
from tui_trainer.run.launch import prepare

BAD = ROOT / "tests" / "fixtures" / "bad_presets"
NO_GPU = {"CUDA_VISIBLE_DEVICES": ""}  # the "cuda" case must fail the same way on a GPU machine
HAS_TENSORBOARD = importlib.util.find_spec("tensorboard") is not None


def skip_if_cannot_fail_here(name: str) -> None:
    if name == "tensorboard_not_installed" and HAS_TENSORBOARD:
        pytest.skip("tensorboard is installed here; this error is for machines without it")


@dataclass(frozen=True)
class Case:
    name: str
    path: Path
    args: tuple[str, ...]
    expect: str

    def matches(self, message: str) -> bool:
        if self.expect.endswith("..."):
            return message.startswith(self.expect[:-3])
        return message == self.expect


def load_cases() -> list[Case]:
    cases = []
    for path in sorted(BAD.glob("*.toml")):
        header = {}
        for line in path.read_text(encoding="utf-8").splitlines():
            if line.startswith("# ") and ":" in line:
                tag, _, text = line[2:].partition(":")
                header.setdefault(tag.strip(), text.strip())
        assert "expect" in header and "wrong" in header, f"{path.name}: needs '# wrong:' and '# expect:'"
        expect = header["expect"].replace("{file}", str(path))
        cases.append(Case(path.stem, path, tuple(shlex.split(header.get("args", ""))), expect))
    return cases


CASES = load_cases()
IDS = [c.name for c in CASES]


def test_the_table_covers_the_contract():
    must = {"toml_syntax_error", "unknown_key_typo", "unknown_section", "wrong_type_string_for_int",
            "negative_batch_size", "unknown_optimizer", "unknown_scheduler", "unknown_loss", "unknown_arch",
            "unknown_weights", "scheduler_kwarg_not_taken", "scheduler_missing_required_arg",
            "freeze_prefix_matches_nothing", "group_prefix_matches_nothing", "overlapping_groups",
            "missing_data_root", "set_no_equals", "set_wrong_type", "set_unknown_key", "num_classes_mismatch",
            "mode_contradicts_monitor", "cuda_without_cuda", "tensorboard_not_installed"}
    assert must <= set(IDS)


# --------------------------------------------------------------------------- through the CLI

# Bad paths and options, beside the table: (id, argv, expected message); {ok} is a valid preset,
# {bad} a bad one, {bogus} a file that is not a checkpoint, {loops} a checkpoint of tui_trainer.loop.
EXTRA_CLI = [
    ("missing-file", ["no_such_preset.toml"], "no_such_preset.toml: no such preset file; see presets/ for examples"),
    ("missing-suffix", ["presets/resnet18_finetune"],
     "presets/resnet18_finetune: no such preset file (a preset is a .toml file); see presets/ for examples"),
    ("unknown-option", ["{ok}", "--no-ui", "--frobnicate"],
     "unrecognized arguments: --frobnicate (see tui-trainer --help)"),
    ("preview-bad-preset", ["preview", "{bad}"], '{bad}: train.epoch: unknown key in [train]; did you mean "epochs"?'),
    ("resume-missing", ["{ok}", "--no-ui", "--resume", "nowhere/last.pt"],
     "--resume: no checkpoint at nowhere/last.pt; give a .pt file from runs/*/checkpoints/ or --resume auto"),
    ("resume-auto-none", ["{ok}", "--no-ui", "--resume", "auto"],
     "--resume auto: no runs/tiny-*/checkpoints/last.pt in this directory; start without --resume,"
     " or give the checkpoint's path"),
    ("resume-damaged", ["{ok}", "--no-ui", "--resume", "{bogus}"],
     "--resume: cannot load {bogus}: it is damaged or not a checkpoint (UnpicklingError: ..."),
    ("resume-a-loops", ["{ok}", "--no-ui", "--resume", "{loops}"],
     "--resume: {loops} is a checkpoint of a tui_trainer.loop run; resume it with loop(..., resume=) (to start"
     ' from its weights: model.weights = "{loops}" in a preset, or model.load_state_dict(torch.load(path,'
     " weights_only=True)['model']) before fit)"),
    ("resume-a-loops-on-2-ranks", ["{ok}", "--no-ui", "--set", "train.devices=2", "--resume", "{loops}"],
     "--resume: {loops} is a checkpoint of a tui_trainer.loop run; ..."),
]
CLI_IDS = IDS + [name for name, _, _ in EXTRA_CLI]


# These go through a fresh interpreter (`python -m tui_trainer`, the true entry); the others through
# the fork server, which runs the same entry (runpy, same argv, same exit path) in a forked child of
# a process that imported torch once: 59 fresh interpreters took ~65 s of the suite on 2 cores.
FRESH = {"toml_syntax_error", "cuda_without_cuda", "missing-file", "unknown-option", "resume-damaged"}


@dataclass
class Ran:
    returncode: int
    stdout: str
    stderr: str


@pytest.fixture(scope="module")
def cli_results(tmp_path_factory, fork_server):
    """Run every case through the real CLI, as many at a time as there are cores, each in an empty
    directory of its own (its output goes elsewhere). -> {id: (process, cwd, expected)}"""
    from tests.conftest import ONE_THREAD_ENV, tiny_preset_text

    files = tmp_path_factory.mktemp("inputs")
    logs = tmp_path_factory.mktemp("logs")
    ok, bogus, loops = files / "tiny.toml", files / "last.pt", files / "loop-last.pt"
    ok.write_text(tiny_preset_text(), encoding="utf-8")
    bogus.write_bytes(b"not a checkpoint")
    from tui_trainer.engine.checkpoint import FORMAT

    torch.save({"format": FORMAT, "kind": "loop", "step": 4, "model": {}}, loops)  # what a loop's holds first
    names = dict(ok=ok, bad=BAD / "unknown_key_typo.toml", bogus=bogus, loops=loops)
    jobs = [(c.name, [str(c.path), "--no-ui", *c.args], c.expect) for c in CASES]
    jobs += [(name, [a.format(**names) for a in argv], expect.format(**names)) for name, argv, expect in EXTRA_CLI]
    env = {**NO_GPU, **ONE_THREAD_ENV}

    def one(job):
        name, argv, expect = job
        cwd = tmp_path_factory.mktemp(name)
        if name in FRESH:
            return name, (run_cli(*argv, cwd=cwd, timeout=120, env_extra=env), cwd, expect)
        out, err = logs / f"{name}.out", logs / f"{name}.err"
        child = fork_server.start(argv, cwd, env=env, log=str(out), err_log=str(err))
        code = child.wait(timeout=120)
        return name, (Ran(code, out.read_text(), err.read_text()), cwd, expect)

    with concurrent.futures.ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as pool:
        return dict(pool.map(one, jobs))


def test_some_cases_run_in_a_fresh_interpreter():
    assert FRESH <= set(CLI_IDS)


@pytest.mark.parametrize("name", CLI_IDS)
def test_cli_prints_one_line_and_exits_2(name, cli_results):
    skip_if_cannot_fail_here(name)
    proc, cwd, expect = cli_results[name]
    assert proc.returncode == 2, proc.stderr + proc.stdout
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.splitlines()
    assert len(lines) == 1, proc.stderr
    prefix = "tui-trainer: error: "
    assert lines[0].startswith(prefix)
    message = lines[0][len(prefix):]
    if expect.endswith("..."):
        assert message.startswith(expect[:-3]), f"\n got: {message}\nwant: {expect}"
    else:
        assert message == expect
    assert proc.stdout == ""
    assert list(cwd.iterdir()) == [], "bad input must leave nothing behind (no runs/ directory)"


# --------------------------------------------------------------------------- in-process


def first_error(case: Case) -> UserError:
    """The same path the CLI takes, one stage at a time: load, check, then the full prepare."""
    overrides = [value for flag, value in zip(case.args[::2], case.args[1::2]) if flag == "--set"]
    with pytest.raises(UserError) as info:
        preset = config.load(case.path, overrides)
        check(preset)
        prepare(case.path, overrides)
    return info.value


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_in_process_error(case: Case, tmp_path):
    if case.name == "cuda_without_cuda" and torch.cuda.is_available():
        pytest.skip("this machine has CUDA; the CLI half of this case hides it with CUDA_VISIBLE_DEVICES")
    skip_if_cannot_fail_here(case.name)
    err = first_error(case)
    message = str(err)
    assert "\n" not in message
    assert case.matches(message), f"\n got: {message}\nwant: {case.expect}"
    assert err.exit_code == 2
    assert not (tmp_path / "runs").exists()


def test_errors_name_the_key_the_user_wrote():
    """The key in the message is the dotted path in the file (or the --set), not pydantic's loc."""
    by_name = {c.name: c for c in CASES}
    assert first_error(by_name["unknown_key_typo"]).key == "train.epoch"
    assert first_error(by_name["freeze_prefix_matches_nothing"]).key == "model.freeze[1]"
    err = first_error(by_name["set_unknown_optimizer_kwarg"])
    assert (err.source, err.key) == ("--set optimizer.momentun", "optimizer.momentun")
