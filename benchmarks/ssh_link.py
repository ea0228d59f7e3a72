"""Watching a run over SSH: `attach ssh://` (events over the link, screen drawn here) against the
full TUI repainted through `ssh -tt` (screen drawn there). By hand, as root (a throw-away sshd on
127.0.0.1, tests/helpers/sshd.py):

    python benchmarks/ssh_link.py            # bandwidth (tiny, resnet18) and key latency (+0 / +100 ms RTT)
    python benchmarks/ssh_link.py --quick

Both viewers run in a 120x40 tmux pane on a real headless run (`--no-ui`, workload from
benchmarks/workloads.py, made long enough to outlast the window) and reach the sshd through
benchmarks/delay_proxy.py as ssh's ProxyCommand, which counts the encrypted bytes each way and
adds a one-way delay (tc netem is not in this kernel: no sch_netem, no modules).

1. Bandwidth: bytes/s each way over a window after the viewer has drawn the run (the replay on
   connect is excluded and reported apart), with the run's steps/s in the same window.
2. Key latency: `l` and `L` alternately (LR x0.5, undo), each sent with tmux send-keys once the
   last one is applied and its toast gone; "echo" is the first screen capture (polled every few
   ms) with the app's toast for the key (drawn where the app runs), "applied" the engine's time
   stamp on the LrChanged it caused, "header" the first capture whose header shows the change
   (the header is redrawn at most every 0.5 s, so this includes up to 0.5 s of pacing). Median
   and max.
   Modes with "+C" have ssh's Compression on (`attach ssh://` turns it on by itself since it was
   measured here: the JSON lines compress well).
"""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import common  # noqa: E402
from benchmarks.workloads import RESNET18, TINY  # noqa: E402

PY = sys.executable
ROOT = common.ROOT
PROXY = ROOT / "benchmarks" / "delay_proxy.py"


def tmux(sock: Path, *args: str) -> str:
    return subprocess.run(["tmux", "-S", str(sock), *args], capture_output=True, text=True, timeout=60).stdout


class Bench:
    def __init__(self, sshd, scratch: Path):
        self.sshd, self.scratch = sshd, scratch
        self.sock = scratch / "tmux.sock"

    def ssh_config(self, delay: float, counts: Path, compression: bool = False) -> Path:
        path = self.scratch / f"ssh_config_{counts.stem}"
        base = self.sshd.client_config().read_text().replace(f"Host {self.sshd.host}", "Host bench")
        proxy = f"{shlex.quote(PY)} {PROXY} {self.sshd.host} {self.sshd.port} {delay} {counts}"
        path.write_text(base + f"  HostName {self.sshd.host}\n  ProxyCommand {proxy}\n"
                        f"  Compression {'yes' if compression else 'no'}\n")
        return path

    def start_run(self, workload, name: str, steps: int) -> tuple[subprocess.Popen, Path]:
        preset = workload.write(self.scratch, steps=steps)
        run = self.scratch / name
        proc = subprocess.Popen(["nice", "-n", "5", PY, "-m", "tui_trainer", str(preset), "--no-ui", "--run-dir",
                                 str(run)], cwd=ROOT, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                stderr=subprocess.STDOUT,
                                env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)})
        tail = common.EventTail(run / "events.jsonl")
        while tail.poll().step < workload.log_every or not (run / "control.json").exists():
            time.sleep(0.1)
        return proc, run

    def viewer(self, mode: str, run: Path, config: Path) -> None:
        """mode "attach": attach ssh://bench/RUN here; "tty": the TUI there, through ssh -tt
        (a "+C" suffix: the same with ssh's Compression on, set in `config`; attach turns it on by
        itself, so plain "attach" turns it off again: the first -o wins)."""
        off = "" if mode.endswith("+C") else " -o Compression=no"
        mode = mode.removesuffix("+C")
        tmux(self.sock, "kill-server")
        env = f"env LANG=C.UTF-8 PYTHONPATH={ROOT}"
        if mode == "attach":
            cmd = (f"{env} TUI_TRAINER_SSH='ssh -F {config}{off}' TUI_TRAINER_REMOTE='{self.sshd.remote_program()}'"
                   f" {PY} -m tui_trainer attach ssh://bench{run}")
        else:
            remote = f"{self.sshd.remote_program()} attach {shlex.quote(str(run))}"
            cmd = f"ssh -F {config} -tt bench {shlex.quote(remote)}"
        tmux(self.sock, "new-session", "-d", "-s", "v", "-x", "120", "-y", "40", f"unset COLUMNS LINES; {cmd}; sleep 600")

    def screen(self) -> str:
        return tmux(self.sock, "capture-pane", "-p", "-t", "v")

    def wait_screen(self, pattern: str, limit_s: float = 120) -> float:
        deadline = time.monotonic() + limit_s
        while not re.search(pattern, self.screen()):
            if time.monotonic() > deadline:
                raise RuntimeError(f"{pattern!r} never showed:\n{self.screen()}")
            time.sleep(0.005)
        return time.time()

    def close_viewer(self) -> None:
        tmux(self.sock, "kill-server")


def counts(path: Path) -> dict:
    for _ in range(50):
        try:
            return json.loads(path.read_text())
        except (OSError, ValueError):
            time.sleep(0.05)
    raise RuntimeError(f"no counts in {path}")


TOAST = {"l": r"LR ×0\.5(?! by hand)", "L": r"LR ×2 \(undo\)"}  # the app's notification for each key


def bandwidth(bench: Bench, workload, mode: str, window_s: float, steps: int) -> dict:
    counts_path = bench.scratch / f"counts-{workload.name}-{mode.replace('+', '')}.json"
    config = bench.ssh_config(0.0, counts_path, compression=mode.endswith("+C"))
    proc, run = bench.start_run(workload, f"bw-{workload.name}-{mode}", steps)
    try:
        bench.viewer(mode, run, config)
        bench.wait_screen(r"RUNNING")
        time.sleep(3)  # the replay and the first full paint are over
        c0, t0 = counts(counts_path), time.time()
        time.sleep(window_s)
        c1, t1 = counts(counts_path), time.time()
        tail = common.EventTail(run / "events.jsonl").poll()
        rate = tail.rate_between(t0, t1)
        bench.close_viewer()
    finally:
        bench.close_viewer()
        proc.terminate()
        proc.wait(60)
    span = c1["time"] - c0["time"]
    return {"workload": workload.name, "mode": mode, "down_Bps": (c1["down"] - c0["down"]) / span,
            "up_Bps": (c1["up"] - c0["up"]) / span, "connect_down_bytes": c0["down"], "steps_per_s": rate,
            "window_s": span}


def latency(bench: Bench, mode: str, delay: float, presses: int) -> dict:
    counts_path = bench.scratch / f"counts-lat-{mode}-{delay}.json"
    config = bench.ssh_config(delay, counts_path)
    proc, run = bench.start_run(TINY, f"lat-{mode}-{delay}", 10**6)
    applied, seen, echo = [], [], []
    try:
        bench.viewer(mode, run, config)
        bench.wait_screen(r"RUNNING")
        time.sleep(2)
        tail = common.EventTail(run / "events.jsonl")
        for i in range(presses):
            key, shown = ("l", r"by hand") if i % 2 == 0 else ("L", None)
            tail.poll()
            before = len(tail.manual_lr)
            toasts = len(re.findall(TOAST[key], bench.screen()))
            t0 = time.time()
            tmux(bench.sock, "send-keys", "-t", "v", key)
            deadline = time.monotonic() + 60
            while len(re.findall(TOAST[key], bench.screen())) <= toasts and time.monotonic() < deadline:
                time.sleep(0.002)
            echo.append(time.time() - t0)
            if shown:
                t_seen = bench.wait_screen(shown)
            else:
                deadline = time.monotonic() + 60
                while "by hand" in bench.screen() and time.monotonic() < deadline:
                    time.sleep(0.005)
                t_seen = time.time()
            while len(tail.poll().manual_lr) == before:
                time.sleep(0.005)
            applied.append(tail.manual_lr[-1] - t0)
            seen.append(t_seen - t0)
            time.sleep(2.5)  # the toast (2 s) is gone before the next press
        bench.close_viewer()
    finally:
        bench.close_viewer()
        proc.terminate()
        proc.wait(60)
    return {"mode": mode, "rtt_added_ms": 2000 * delay, "presses": presses,
            "applied_median_ms": 1000 * statistics.median(applied), "applied_max_ms": 1000 * max(applied),
            "seen_median_ms": 1000 * statistics.median(seen), "seen_max_ms": 1000 * max(seen),
            "echo_median_ms": 1000 * statistics.median(echo), "echo_max_ms": 1000 * max(echo)}


def main() -> int:
    p = common.parser(__doc__.splitlines()[0])
    p.add_argument("--window", type=float, default=20.0, help="bandwidth window, seconds")
    p.add_argument("--presses", type=int, default=12)
    args = p.parse_args()
    window = 5.0 if args.quick else args.window
    presses = 4 if args.quick else args.presses
    from tests.helpers.sshd import serve

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # a kill still stops sshd and removes its files

    results: dict = {"versions": common.versions(), "bandwidth": [], "latency": []}
    with tempfile.TemporaryDirectory(prefix="tt-ssh-bench-") as scratch, serve() as sshd:
        bench = Bench(sshd, Path(scratch))
        for workload, steps, span in ((TINY, 10**6, window), (RESNET18, 10**4, 3 * window)):
            for mode in ("attach", "tty", "attach+C", "tty+C"):
                r = bandwidth(bench, workload, mode, span, steps)
                results["bandwidth"].append(r)
                print(f"{r['workload']:>9} {mode:>8}: down {r['down_Bps']:>9,.0f} B/s  up {r['up_Bps']:>7,.0f} B/s"
                      f"  (connect: {r['connect_down_bytes']:,} B down; run {r['steps_per_s'] or 0:,.1f} steps/s)",
                      flush=True)
        for delay in (0.0, 0.05):
            for mode in ("attach", "tty"):
                r = latency(bench, mode, delay, presses)
                results["latency"].append(r)
                print(f"+{r['rtt_added_ms']:.0f} ms RTT {mode:>6}: key->echo median {r['echo_median_ms']:.0f} ms"
                      f" (max {r['echo_max_ms']:.0f}), key->applied median {r['applied_median_ms']:.0f} ms"
                      f" (max {r['applied_max_ms']:.0f}), key->header median {r['seen_median_ms']:.0f} ms"
                      f" (max {r['seen_max_ms']:.0f})", flush=True)
    common.write_json(args.json, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
