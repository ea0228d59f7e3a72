"""The GPU checks in one short command, for a session that is lent a GPU machine (the device tool):
the Memory pane on real CUDA numbers, AMP (bf16 and fp16), no host sync in the step path, the
CUDA-only tests, and the NCCL path on 2 GPUs. About 3-5 minutes on one H200; each check prints
PASS, FAIL or SKIP with what it saw, and the exit code is the number of FAILs.

    python3 benchmarks/gpu_check.py --out "$OUT"     # on the GPU machine
    python benchmarks/gpu_check.py --device cpu       # anywhere: the plumbing only (CUDA checks SKIP)

The GPU machine's image has torch, psutil, rich, scikit-learn and pytest, not textual or pydantic:
carry them as wheels (benchmarks/README.md, "GPU machine"). `--out` gets the log and the runs'
events.jsonl, so that what was seen comes back.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

PRESET = "presets/digits_mlp.toml"
CUDA_TESTS = ["tests/integration/test_cuda_sync.py", "tests/integration/test_nonfinite.py",
              "tests/unit/test_metrics.py", "-k", "cuda"]


class Checks:
    def __init__(self, out: Path):
        self.out, self.results = out, []

    def say(self, name: str, verdict: str, seen: str) -> None:
        self.results.append((name, verdict, seen))
        print(f"[{verdict}] {name}: {seen}", flush=True)

    def check(self, name: str, ok: bool, seen: str) -> bool:
        self.say(name, "PASS" if ok else "FAIL", seen)
        return ok


def cli_run(scratch: Path, name: str, device: str, *sets: str, timeout: int = 240) -> tuple[int, list[dict], str]:
    """The CLI, headless, on the digits preset (a few hundred steps): exit code, events, output."""
    run_dir = scratch / name
    args = [sys.executable, "-m", "tui_trainer", PRESET, "--no-ui", "--run-dir", str(run_dir),
            "--set", f'train.device="{device}"', "--set", "train.epochs=2", "--unset", "early_stopping", *sets]
    proc = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    events_path = run_dir / "events.jsonl"
    events = [json.loads(line) for line in events_path.read_text().splitlines() if line.strip()] \
        if events_path.exists() else []
    return proc.returncode, events, proc.stdout + proc.stderr


def losses(events: list[dict]) -> list[float]:
    return [v for e in events if e["kind"] == "StepReport" for v in e["losses"]]


def memory_pane_lines(events: list[dict]) -> list[str]:
    """The Memory pane drawn from the run's events (the app's CSS, 100x22), as text."""
    from tests.integration.test_memory_pane import PaneApp, pane_lines, settle
    from tui_trainer.engine.events import from_json

    app = PaneApp([from_json(e) for e in events], rows=20)

    async def draw():
        async with app.run_test(size=(100, 22)) as pilot:
            await settle(pilot)
            return pane_lines(app)

    return asyncio.run(draw())


def check_memory(c: Checks, scratch: Path, device: str) -> None:
    code, events, output = cli_run(scratch, "memory", device)
    reports = [e for e in events if e["kind"] == "StepReport" and e.get("memory")]
    if not c.check("memory: a run on " + device, code == 0 and bool(reports), f"exit {code}, {len(reports)} reports"
                   f" with memory{'' if code == 0 else ': ' + output[-400:]}"):
        return
    m = reports[-1]["memory"]
    if device.startswith("cuda"):
        ok = (m["allocated"] or 0) > 0 and (m["reserved"] or 0) >= m["allocated"] and (m["total"] or 0) > 0
        c.check("memory: CUDA numbers recorded", ok, ", ".join(f"{k} {m.get(k)}" for k in
                ("device", "allocated", "reserved", "peak", "total", "utilization", "rss")))
    lines = memory_pane_lines(events)
    print("    " + "\n    ".join(lines), flush=True)
    first = lines[0] if lines else ""
    want = "GPU cuda" if device.startswith("cuda") else "process"
    c.check("memory: the pane draws them", first.startswith(want), f"first row {first!r}")


AMP = {"bf16": "bfloat16", "fp16": "float16"}  # the preset's name -> RunStarted.amp


def check_amp(c: Checks, scratch: Path, device: str) -> None:
    """bf16 and fp16 (GradScaler) runs end with finite losses; on CPU bf16 alone (CPU autocast)."""
    for amp in ("bf16", "fp16") if device.startswith("cuda") else ("bf16",):
        code, events, output = cli_run(scratch, f"amp-{amp}", device, "--set", f'train.amp="{amp}"')
        values = losses(events)
        started = next((e for e in events if e["kind"] == "RunStarted"), {})
        ends = [e for e in events if e["kind"] == "EpochEnd"]
        ok = (code == 0 and started.get("amp") == AMP[amp] and values and all(map(math.isfinite, values))
              and len(ends) == 2)
        c.check(f"amp {amp}", bool(ok), f"exit {code}, amp {started.get('amp')}, {len(values)} losses"
                f" {values[0] if values else '-'} -> {values[-1] if values else '-'}, val_acc"
                f" {ends[-1].get('val_acc') if ends else '-'}{'' if code == 0 else ': ' + output[-400:]}")


def check_no_sync(c: Checks, device: str) -> None:
    from benchmarks import sync_check

    results = sync_check.main(["--device", device])
    if results is None:
        c.say("no host sync", "SKIP", "no GPU")
        return
    bad = [r.name for r in results if r.required and not r.passed]
    c.check("no host sync in the step path", not bad, f"{len(results)} cases" + (f"; failed: {bad}" if bad else ""))


def check_cuda_tests(c: Checks, device: str) -> None:
    if not device.startswith("cuda"):
        c.say("CUDA-only tests", "SKIP", "CUDA only")
        return
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rs", *CUDA_TESTS],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    tail = [line for line in proc.stdout.splitlines() if line.strip()][-1:] or ["(no output)"]
    c.check("CUDA-only tests", proc.returncode == 0 and " passed" in tail[0], tail[0])


def check_nccl(c: Checks, scratch: Path, device: str) -> None:
    import torch

    if not device.startswith("cuda"):
        c.say("NCCL, 2 ranks", "SKIP", "CUDA only")
        return
    if torch.cuda.device_count() < 2:
        c.say("NCCL, 2 ranks", "SKIP", f"{torch.cuda.device_count()} GPU here; NCCL takes one GPU a rank")
        return
    code, events, output = cli_run(scratch, "nccl", device, "--set", "train.devices=2")
    started = next((e for e in events if e["kind"] == "RunStarted"), {})
    ranks = next((e["ranks"] for e in reversed(events) if e["kind"] == "StepReport" and e.get("ranks")), [])
    c.check("NCCL, 2 ranks: a run", code == 0 and started.get("world") == 2 and len(ranks) == 2,
            f"exit {code}, world {started.get('world')}, ranks' devices {[r['device'] for r in ranks]}"
            + ("" if code == 0 else ": " + output[-400:]))
    from benchmarks import ddp

    result = ddp.main(["--device", device, "--quick", "--workload", "tiny"])
    ratio = (result.get("workloads") or [{}])[0].get("ratio", {}).get("b")
    c.check("NCCL, 2 ranks: ddp.py --quick", ratio is not None, f"engine/bare {ratio}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda")
    p.add_argument("--out", default=None, help="a folder for the runs' events.jsonl (the device tool's $OUT)")
    args = p.parse_args(argv)
    import torch

    out = Path(args.out) if args.out else None
    c = Checks(out)
    cuda = args.device.startswith("cuda")
    names = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())] if torch.cuda.is_available() else []
    print(f"torch {torch.__version__}, CUDA available {torch.cuda.is_available()}, GPUs {names}", flush=True)
    if cuda and not torch.cuda.is_available():
        c.say("GPU", "FAIL", "no CUDA device; run with --device cpu for the plumbing")
        return 1
    t0 = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="tui-gpu-check-") as tmp:
        scratch = Path(tmp)
        for step in (lambda: check_memory(c, scratch, args.device), lambda: check_amp(c, scratch, args.device),
                     lambda: check_no_sync(c, args.device), lambda: check_cuda_tests(c, args.device),
                     lambda: check_nccl(c, scratch, args.device)):
            try:
                step()
            except Exception as exc:  # noqa: BLE001 - one broken check must not hide the others
                c.say("(a check)", "FAIL", f"{type(exc).__name__}: {exc}")
        if out is not None:
            out.mkdir(parents=True, exist_ok=True)
            for run in sorted(scratch.iterdir()):
                if (run / "events.jsonl").exists():
                    shutil.copy(run / "events.jsonl", out / f"events-{run.name}.jsonl")
    fails = sum(v == "FAIL" for _, v, _ in c.results)
    print(f"gpu check: {fails} FAIL, {sum(v == 'PASS' for _, v, _ in c.results)} PASS,"
          f" {sum(v == 'SKIP' for _, v, _ in c.results)} SKIP in {time.monotonic() - t0:.0f} s", flush=True)
    if out is not None:
        (out / "gpu_check.json").write_text(json.dumps(
            [{"check": n, "verdict": v, "seen": s} for n, v, s in c.results], indent=1))
    return fails


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
