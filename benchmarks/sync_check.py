"""No host sync per step on CUDA: the engine's step path must never wait for the GPU; the losses
reach the host once per report (and the layer-stats probe once per sample, ~2 Hz).

    python benchmarks/sync_check.py            # on a machine with CUDA; prints "no GPU: skipped" without

How: the real engine (`launch.prepare`: run-dir recorder, real Trainer) trains the tiny workload on
CUDA. Around each call of the step path (`Trainer._between_steps` and `Trainer._step`) the check
sets `torch.cuda.set_sync_debug_mode("error")`, so any synchronizing CUDA call in there raises and
ends the run as Failed, with the line that synced in the traceback. Reports run outside that
window. A second pass runs the whole loop in "warn" mode and counts every sync with the line that
made it: the count must follow the number of reports, not the number of steps.
"""

from __future__ import annotations

import itertools
import sys
import tempfile
import warnings
from collections import Counter
from dataclasses import dataclass, field, replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import common  # noqa: E402
from benchmarks.workloads import DIGITS_DICTS, TINY  # noqa: E402

# A user step on dict batches {"image", "label"} from a dataset factory (workloads.py): to_device
# walks the dict, the step returns {"loss", "outputs", "targets"}.
DICT_BATCHES = [f'data.dataset="{DIGITS_DICTS}"', "data.kwargs.size=8", 'step.fn="benchmarks.workloads:dict_step"']

# (name, preset overrides, layer stats on, must pass). fp16 is informational: torch's GradScaler.step
# reads found_inf with .item() every step unless the optimizer is fused, so that sync is torch's.
CASES = [
    ("fp32, DataLoader (pinned, non_blocking)", ["train.amp=\"off\"", "data.preload=false"], False, True),
    ("bf16 autocast + grad clipping, preloaded", ["train.amp=\"bf16\"", "train.grad_clip_norm=1.0"], False, True),
    ("bf16 + layer stats (as the app runs it)", ["train.amp=\"bf16\""], True, True),
    ("custom step + dict batches, DataLoader (pinned)", [*DICT_BATCHES, "data.preload=false"], False, True),
    ("custom step + dict batches, preloaded, bf16", [*DICT_BATCHES, "train.amp=\"bf16\""], False, True),
    # two micro-batches of 16 per optimizer step: the same 56 optimizer steps per epoch as batch 32
    ("accumulate = 2 (batch 16), bf16 + grad clipping",
     ["train.accumulate=2", "data.batch_size=16", "train.amp=\"bf16\"", "train.grad_clip_norm=1.0"], False, True),
    ("fp16 + GradScaler (informational)", ["train.amp=\"fp16\""], False, False),
]


@dataclass
class CaseResult:
    name: str
    required: bool
    steps: int = 0
    epochs: int = 0
    reports: int = 0
    stats_steps: int = 0  # steps that took a layer-stats sample (a sync is allowed there)
    strict_error: str | None = None  # the Failed message when a sync happened in the step path
    syncs: int = 0  # syncs from the first step to the end of the loop (warn pass)
    where: Counter = field(default_factory=Counter)

    @property
    def allowed(self) -> int:
        """One per report and per layer-stats sample, one per epoch (the epoch's batch order goes to
        the device once), a few to spare: a number that follows reports, never steps."""
        return self.reports + self.stats_steps + self.epochs + 4

    @property
    def passed(self) -> bool:
        return self.strict_error is None and self.syncs <= self.allowed


def _set_mode(device: str, mode: str) -> None:
    if device.startswith("cuda"):
        import torch

        torch.cuda.set_sync_debug_mode(mode)


def run_case(name, overrides, layer_stats, required, *, device="cuda", steps=200, log_every=50, scratch: Path):
    """Run one case twice (strict, then counting). On CPU only the plumbing runs (no sync mode)."""
    from tui_trainer.engine.events import EpochEnd, Failed, StepReport
    from tui_trainer.run.launch import prepare

    w = replace(TINY, steps=steps, log_every=log_every)
    preset = w.write(scratch, device=device)
    result = CaseResult(name, required)
    runs = itertools.count()

    # 1. strict: the step path raises on any sync
    events = []
    session = prepare(str(preset), overrides, run_dir=scratch / f"run-{next(runs)}", sinks=[events.append],
                      layer_stats=layer_stats)
    trainer = session.trainer
    step, between = trainer._step, trainer._between_steps

    def strict(call, *args):
        stats_step = call is step and trainer._stats_due  # the layer-stats probe syncs once, by design
        result.stats_steps += stats_step
        _set_mode(device, "default" if stats_step else "error")
        try:
            return call(*args)
        finally:
            _set_mode(device, "default")

    trainer._step = lambda batch: strict(step, batch)
    trainer._between_steps = lambda: strict(between)
    try:
        trainer.run()
    finally:
        _set_mode(device, "default")
        session.close()
    failed = [e for e in events if isinstance(e, Failed)]
    if failed:
        result.strict_error = failed[0].error + "\n" + _last_frames(failed[0].traceback)
    result.steps = trainer.step
    result.reports = sum(isinstance(e, StepReport) for e in events)
    result.epochs = sum(isinstance(e, EpochEnd) for e in events) + 1

    # 2. count every sync from the first step to the end of the loop (the final save is not the loop)
    session = prepare(str(preset), overrides, run_dir=scratch / f"run-{next(runs)}", layer_stats=layer_stats)
    trainer = session.trainer
    step, finish = trainer._step, trainer._finish

    def first_step(batch):
        _set_mode(device, "warn")
        trainer._step = step
        return step(batch)

    def end(*args):
        _set_mode(device, "default")
        return finish(*args)

    trainer._step, trainer._finish = first_step, end
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            trainer.run()
        finally:
            _set_mode(device, "default")
            session.close()
    for warning in caught:
        if "synchroniz" in str(warning.message):
            result.syncs += 1
            result.where[f"{Path(warning.filename).name}:{warning.lineno}"] += 1
    return result


def _last_frames(tb: str, n: int = 6) -> str:
    return "\n".join(tb.strip().splitlines()[-n:])


def main(argv: list[str] | None = None) -> list[CaseResult] | None:
    p = common.parser(__doc__.splitlines()[0])
    p.set_defaults(device="cuda")
    args = p.parse_args(argv)
    import torch

    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("sync check: no GPU: skipped")
        common.write_json(args.json, {"skipped": "no GPU"})
        return None
    steps, log_every = (40, 20) if args.quick else (400, 50)
    results = []
    cases = CASES if args.device.startswith("cuda") else CASES[:1]  # CPU: the plumbing only
    with tempfile.TemporaryDirectory(prefix="tui-sync-") as tmp:
        for name, overrides, stats, required in cases:
            r = run_case(name, overrides, stats, required, device=args.device, steps=steps, log_every=log_every,
                         scratch=Path(tmp))
            results.append(r)
            verdict = "PASS" if r.passed else ("FAIL" if required else "syncs per step (expected, see note)")
            print(f"{name}: {r.steps} steps, {r.reports} reports, {r.stats_steps} layer-stats samples,"
                  f" {r.epochs} epochs; {r.syncs} syncs in the loop (allowed {r.allowed}) -> {verdict}")
            if r.strict_error:
                print("  sync inside the step path:\n    " + r.strict_error.replace("\n", "\n    "))
            for where, n in r.where.most_common(6):
                print(f"    {n:5d} x {where}")
    common.write_json(args.json, {"device": args.device, "versions": common.versions(), "cases": [
        {"name": r.name, "required": r.required, "passed": r.passed, "steps": r.steps, "reports": r.reports,
         "stats_steps": r.stats_steps, "epochs": r.epochs, "allowed": r.allowed, "syncs": r.syncs, "where": dict(r.where), "strict_error": r.strict_error}
        for r in results]})
    bad = [r for r in results if r.required and not r.passed]
    print("sync check: " + ("FAILED: " + ", ".join(r.name for r in bad) if bad else "no host sync in the step path"))
    return results


if __name__ == "__main__":
    sys.exit(1 if any(r.required and not r.passed for r in (main() or [])) else 0)
