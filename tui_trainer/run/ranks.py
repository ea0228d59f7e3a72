"""`train.devices > 1`: the ranks of a DistributedDataParallel run, started on this machine through
torch's elastic launcher (`torch.distributed.launcher.api.elastic_launch`, what torchrun uses).
Every rank is a `--no-ui` run of the same preset into the same run directory, which this process
chooses before it starts them; rank 0 alone writes it, prints the log lines and serves the control
socket (so `tui-trainer attach` steers all ranks: its commands are shared at step boundaries).

Started by torchrun or SLURM instead (WORLD_SIZE set), `tui-trainer PRESET --no-ui` is one rank.
"""

from __future__ import annotations

import os
import signal
import socket
import sys
import uuid
from pathlib import Path

from tui_trainer import config
from tui_trainer.errors import UserError, say_error


def device_count(preset: config.Preset) -> tuple[int, str | None]:
    """(ranks, CUDA_VISIBLE_DEVICES for them or None); a UserError (exit 2) for what cannot run here."""
    import torch

    devices, key = preset.train.devices, "train.devices"
    on_cuda = preset.train.device.startswith("cuda") or (preset.train.device == "auto" and torch.cuda.is_available())
    have = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if devices == "all":
        if not on_cuda:
            raise preset.error(key, '"all" means every CUDA device, and there is none here; give a number of'
                                    ' processes (with device = "cpu") or run on a GPU machine')
        return have, None
    if isinstance(devices, list):
        if not on_cuda:
            raise preset.error(key, f"{devices} names CUDA devices, and this machine has none; use a number with"
                                    ' device = "cpu" (DDP over gloo)')
        bad = [d for d in devices if not 0 <= d < have]
        if bad or len(set(devices)) != len(devices):
            raise preset.error(key, f"{devices}: this machine has CUDA devices 0 to {have - 1}; name each once")
        return len(devices), ",".join(map(str, devices))
    if devices < 1:
        raise preset.error(key, f"got {devices}; must be at least 1")
    if on_cuda and devices > have:
        raise preset.error(key, f"is {devices} but this machine has {have} CUDA device(s)")
    if not on_cuda:
        from tui_trainer.parts import usable_cores

        cores = usable_cores()
        if devices > CPU_RANKS_A_CORE * cores:  # a typo (99), not a plan: each rank holds a copy of torch and the data
            raise preset.error(key, f"is {devices} CPU processes and this machine has {cores} core(s); use at most"
                                    f" {cores} (one a core; up to {CPU_RANKS_A_CORE * cores} start, sharing them)")
    return devices, None


CPU_RANKS_A_CORE = 4  # more CPU ranks than this a core is refused; more than one a core is a warning (parts.build)


def rank_main(preset_path: str, overrides: list[str], resume: str | None, run_dir: str,
              on_hangup: str = "stop") -> int:
    """One rank (module level: the launcher starts it in a fresh interpreter and finds it by name).
    `on_hangup` "detach": the terminal going away does not stop rank 0 either (a hang-up the
    launcher passes on, or one sent to the rank itself)."""
    from tui_trainer.run.headless import run_headless

    rank = int(os.environ.get("RANK", "0"))
    # A process group of its own: a Ctrl+C (or a hang-up) from the terminal reaches the launcher alone,
    # which passes each on once (`signal_ranks`). In the terminal's group rank 0 got a Ctrl+C twice when
    # it was passed on too (an abort), and not at all when the launcher was sent it alone.
    os.setpgid(0, 0)
    if rank:  # stops come from rank 0, shared at a step boundary: a signal here must not end this rank alone
        for name in ("SIGINT", "SIGTERM", "SIGHUP", "SIGUSR1"):
            if hasattr(signal, name):
                signal.signal(getattr(signal, name), signal.SIG_IGN)
    elif on_hangup == "detach":
        signal.signal(signal.SIGHUP, signal.SIG_IGN)  # the headless handlers keep an ignored SIGHUP ignored
    try:
        code = run_headless(preset_path, overrides, resume=resume, run_dir=run_dir, serve=rank == 0)
    except KeyboardInterrupt:  # a second Ctrl+C: aborted (the spawn wrapper would call it exit 0)
        code = 130
    except UserError as err:  # bad input found while this rank built its parts: the launcher says it once
        if not _tell_launcher(rank, str(err), err.exit_code):
            say_error(err)  # (no launcher of ours: this rank says it, named)
        code = err.exit_code
    if code != 0:
        # Leave now: a returned rank waits for the launcher, which after another rank's failure has sent
        # its one SIGTERM already (handled above as a stop) and would wait 30 s before SIGKILL.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    return code


class Launch:
    """The ranks of one run: checked and given a run directory by `Launch.check` (bad input: exit 2
    before any rank starts), started and waited for by `run`."""

    def __init__(self, preset_path: str, overrides: list[str], n: int, resume: str | None, run_dir: Path):
        self.preset_path, self.overrides, self.n, self.resume, self.run_dir = preset_path, overrides, n, resume, run_dir
        self.code: int | None = None
        self.on_hangup = "stop"  # what rank 0 does when the terminal goes away (--on-hangup)
        self.failures_dir: str | None = None  # where failed ranks say why (FAILURES_ENV)
        self.log_dir: str | None = None  # quiet: where the ranks' stdout and stderr went

    @classmethod
    def check(cls, preset_path: str, overrides: list[str], *, resume: str | None, run_dir: str | None) -> Launch:
        from tui_trainer.parts import check
        from tui_trainer.run.rundir import choose_run_dir, resume_checkpoint

        preset = config.load(preset_path, overrides)
        check(preset)
        n, visible = device_count(preset)
        if visible is not None:
            os.environ["CUDA_VISIBLE_DEVICES"] = visible
        resume_path = resume_checkpoint(preset.name, resume)
        if resume_path is not None:  # a loop's, or another global batch: exit 2 before any rank starts
            from tui_trainer.engine import checkpoint

            state = checkpoint.load(resume_path, mmap=True)
            checkpoint.check_kind(state, resume_path, loop=False)
            checkpoint.resume_fit(state, preset, n, resume_path)
        rd, _ = choose_run_dir(preset.name, run_dir, resume_path)  # one directory for every rank
        return cls(str(Path(preset_path).resolve()), list(overrides), n,
                   str(resume_path) if resume_path is not None else None, rd.path)

    def run(self, quiet: bool = False) -> int:
        """Start the ranks and wait. `quiet` (a screen is drawn here): the ranks' output goes to files
        under the run directory's ranks/ and the launcher's own log lines are silenced."""
        import logging

        from torch.distributed.elastic.multiprocessing import DefaultLogsSpecs, Std
        from torch.distributed.elastic.multiprocessing.api import SignalException
        from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
        from torch.distributed.launcher.api import LaunchConfig, elastic_launch

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        logs = DefaultLogsSpecs(redirects=Std.NONE, tee=Std.NONE)
        # the launcher's own log lines (a rank's traceback, "terminating process ...") are noise next to
        # the one line below and the rank's events.jsonl, which holds any traceback. The spawn context
        # under it logs "Terminating process N via signal SIGTERM" when one rank fails while another
        # still runs (torch.multiprocessing.spawn's logger, outside torch.distributed)
        for name in ("torch.distributed.elastic", "torch.multiprocessing"):
            logging.getLogger(name).setLevel(logging.CRITICAL)
        if quiet:
            logging.getLogger("torch.distributed").setLevel(logging.CRITICAL)
            import tempfile

            self.log_dir = tempfile.mkdtemp(prefix="tui-trainer-ranks-")  # not in the run dir: rank 0 makes that
            logs = DefaultLogsSpecs(log_dir=self.log_dir, redirects=Std.ALL, tee=Std.NONE)
        cfg = LaunchConfig(min_nodes=1, max_nodes=1, nproc_per_node=self.n, run_id=uuid.uuid4().hex,
                           rdzv_backend="c10d", rdzv_endpoint=f"127.0.0.1:{port}", rdzv_configs={}, max_restarts=0,
                           monitor_interval=0.1, start_method="spawn", logs_specs=logs)
        import tempfile

        self.failures_dir = tempfile.mkdtemp(prefix="tui-trainer-failures-")
        os.environ[FAILURES_ENV] = self.failures_dir  # the ranks, spawned below, inherit it
        ignore_in_resource_tracker()
        threads = rank_threads(self.n, os.environ)
        if threads is not None:  # inherited by the ranks; the start line says it ("cpu, 1 thread")
            os.environ["OMP_NUM_THREADS"] = str(threads)
        try:
            results = _in_thread(lambda: elastic_launch(cfg, rank_main)(self.preset_path, self.overrides, self.resume,
                                                                        str(self.run_dir), self.on_hangup))
            self.code = int(results.get(0, 1))
        except ChildFailedError as exc:
            codes = {f.exitcode for f in exc.failures.values()}
            if codes <= STOPPED:  # stopped by a signal after rank 0's save: not a failure
                self.code = max(codes)
                return self.code
            first = exc.failures.get(0)
            if first is not None and first.exitcode in STOPPED:  # rank 0 stopped (aborted: 130); the others
                self.code = first.exitcode  # then failed on the lost connection, an echo of it
                return self.code
            if (sig := _forwarded_kill(exc.failures)) is not None:  # a stop sent before rank 0 could take it
                self.code = 128 + sig
                made = self.run_dir.is_dir()
                print(f"tui-trainer: stopped by signal {sig} while the ranks started; nothing was trained"
                      + (f" (run dir {self.run_dir})" if made else ""), file=sys.stderr)
                return self.code
            bad = _bad_input(self.failures_dir)
            if bad is not None:  # every rank builds the same parts: one line, as one process prints it
                rank, message, self.code = bad
                print(f"tui-trainer: error: {'' if rank == 0 else f'rank {rank}: '}{message}", file=sys.stderr)
                if self.log_dir:
                    import shutil

                    shutil.rmtree(self.log_dir, ignore_errors=True)  # nothing in it but that error
                    self.log_dir = None
                return self.code
            rank, failure = _cause(exc.failures)
            if failure.exitcode < 0:
                why = f"killed by {failure.signal_name()}"
            elif (first := _first_own_failure(self.failures_dir)) is not None:
                rank, why = first  # the launcher reports the first rank it noticed: the cause is in the files
            elif lost := next((w for w in LOST_PEER if w in _message(failure).lower()), None):
                why = f"lost its connection to another rank, which ended first: {lost}"
            elif _message(failure).strip():
                why = _message(failure).strip().splitlines()[-1][:300]
            else:
                why = f"exit {failure.exitcode}"
            logs_at = f"; their output: {self.log_dir}" if self.log_dir else ""
            print(f"tui-trainer: rank {rank} of {self.n} failed ({why}); the other ranks were stopped; run dir"
                  f" {self.run_dir}{logs_at}", file=sys.stderr)
            self.code = 2 if failure.exitcode == 2 else 1  # bad input found while a rank built its parts: exit 2
        except SignalException as exc:
            self.code = 128 + int(exc.sigval)
        finally:
            import shutil

            shutil.rmtree(self.failures_dir, ignore_errors=True)
            if threads is not None:
                os.environ.pop("OMP_NUM_THREADS", None)
        return self.code


def rank_threads(n: int, env, cores: int | None = None) -> int | None:
    """How many threads each of `n` ranks on this machine computes with, when the user said nothing
    (OMP_NUM_THREADS unset): the cores shared out, at least one. torch alone gives every process all the
    cores, and 2 CPU ranks on 2 cores then trained 3.5x slower (digits_mlp, 6 epochs: 1.48 s against 0.41 s):
    their threads spin waiting for each other. torchrun sets 1 for the same reason; sharing out keeps a many-core box's
    CPU ranks (or a GPU rank's own CPU work) faster than 1. None: the user's value, or one process."""
    if n < 2 or env.get("OMP_NUM_THREADS"):
        return None
    if cores is None:
        from tui_trainer.parts import usable_cores

        cores = usable_cores()
    return max(1, cores // n)


FAILURES_ENV = "TUI_TRAINER_FAILURES"  # a directory where each rank that fails writes rank-<r>.json
STOPPED = {129, 130, 143}  # a rank's exit after a stop by SIGHUP / SIGINT (abort) / SIGTERM
_FORWARDED: set[int] = set()  # the signals signal_ranks passed on (a rank they killed was stopped, not failed)


def _forwarded_kill(failures: dict) -> int | None:
    """The signal that killed every failed rank, when it is one this process passed on to them: a
    stop that reached a rank before its handlers were installed (while it built its parts)."""
    sigs = {-f.exitcode for f in failures.values() if f.exitcode < 0}
    others = [f for f in failures.values() if f.exitcode >= 0 and not any(w in _message(f).lower() for w in LOST_PEER)]
    if len(sigs) == 1 and not others and (sig := sigs.pop()) in _FORWARDED:
        return sig
    return None


def _tell_launcher(rank: int, error: str, code: int) -> bool:
    """Bad input a rank found while building (a factory that raised, a model that cannot take the
    batch): written for the launcher (FAILURES_ENV), which prints it once for all ranks. False when
    there is no launcher of ours to tell (the rank prints it itself)."""
    import json
    import time

    own = os.environ.get(FAILURES_ENV)
    if not own:
        return False
    try:
        Path(own, f"bad-input-{rank}.json").write_text(
            json.dumps({"rank": rank, "error": error, "code": code, "time": time.time()}), encoding="utf-8")
    except OSError:
        return False
    return True


def _bad_input(directory: str | None) -> tuple[int, str, int] | None:
    """(rank, error, exit code) of the bad input the ranks found while building: rank 0's, else the
    lowest rank's. None when no rank failed that way."""
    found = _written(directory, "bad-input-*.json", lambda d: (int(d["rank"]), str(d["error"]), int(d["code"])))
    return min(found) if found else None


def _first_own_failure(directory: str | None) -> tuple[int, str] | None:
    """(rank, error) of the rank that failed first on its own, from what the ranks wrote (run/launch
    RankFailure). torch's launcher stops at the first failed process it happens to see, which is
    often a rank that failed on the lost connection; a rank killed by a signal writes nothing."""
    found = _written(directory, "rank-*.json", lambda d: (float(d["time"]), int(d["rank"]), str(d["error"])))
    own = sorted(f for f in found if not any(s in f[2].lower() for s in LOST_PEER))
    return (own[0][1], own[0][2][:300]) if own else None


def _written(directory: str | None, pattern: str, fields) -> list[tuple]:
    """`fields(record)` of each JSON file matching `pattern` that the ranks wrote into `directory`
    (FAILURES_ENV); a file being written or malformed is skipped."""
    import json

    found = []
    for path in Path(directory).glob(pattern) if directory else ():
        try:
            found.append(fields(json.loads(path.read_text(encoding="utf-8"))))
        except (OSError, ValueError, KeyError, TypeError):
            continue
    return found


def _message(failure) -> str:
    return str(failure.message.get("message", "")) if isinstance(failure.message, dict) else ""


LOST_PEER = ("connection closed by peer", "connection reset", "broken pipe", "socket closed", "nccl communicator was aborted")


def _cause(failures: dict):
    """(rank, failure) to name: the cause, not its echo. A rank killed by a signal first; then one
    that failed on its own (its error file says why); last, one that failed because a peer was
    gone (the others fail on the lost connection, and may be noticed before the cause)."""
    def rank_of(item) -> tuple:
        rank, f = item
        lost = any(s in _message(f).lower() for s in LOST_PEER)
        return (f.exitcode >= 0, not _message(f) or lost, rank)

    return min(failures.items(), key=rank_of)


def signal_ranks(signum: int) -> None:
    """Pass a signal to the ranks this process started, once: they are in process groups of their own
    (`rank_main`), so a Ctrl+C or hang-up from the terminal reaches them only so. Rank 0 turns a stop
    into a stop for all (a second SIGINT aborts); the others ignore it."""
    import psutil

    _FORWARDED.add(signum)
    for child in psutil.Process().children(recursive=True):
        try:
            if "resource_tracker" in " ".join(child.cmdline()):  # multiprocessing's: a signal would kill it
                continue
            os.kill(child.pid, signum)
        except (OSError, psutil.Error):
            pass


def ignore_in_resource_tracker() -> None:
    """Start multiprocessing's resource tracker (it outlives the ranks' semaphores) with SIGHUP and
    SIGUSR1 ignored, which it inherits: a terminal that closes sends SIGHUP to its whole process
    group, tracker included, and a dead tracker filled the screen with its KeyErrors."""
    import threading
    from multiprocessing import resource_tracker

    if threading.current_thread() is not threading.main_thread():
        return  # (signal.signal works on the main thread only: run_ranks_app calls this before its thread)
    saved = {sig: signal.signal(sig, signal.SIG_IGN) for sig in (signal.SIGHUP, signal.SIGUSR1)}
    try:
        resource_tracker.ensure_running()
    finally:
        for sig, handler in saved.items():
            signal.signal(sig, handler)


def _in_thread(start):
    """Run the launcher in a thread: on the main thread elastic_launch would install its own signal
    handlers (and keep them), which forward a Ctrl+C the ranks already got from the terminal and then
    wait 30 s for ranks that are done. Here SIGINT, SIGTERM, SIGHUP and SIGUSR1 are passed on to the
    ranks once each (rank 0 turns a stop into a stop for all; SIGUSR1 left to its default killed the
    launcher and orphaned the ranks)."""
    import threading

    out: dict = {}

    def run() -> None:
        try:
            out["value"] = start()
        except BaseException as exc:  # noqa: BLE001 - re-raised in the caller's thread
            out["error"] = exc

    thread = threading.Thread(target=run, name="launcher", daemon=True)
    thread.start()
    saved = {}
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGUSR1):
            saved[sig] = signal.signal(sig, lambda signum, frame: signal_ranks(signum))
    try:
        while thread.is_alive():
            thread.join(0.2)
    finally:
        for sig, handler in saved.items():
            signal.signal(sig, handler)
    if "error" in out:
        raise out["error"]
    return out["value"]


def launch(preset_path: str, overrides: list[str], *, resume: str | None, run_dir: str | None) -> int:
    """`--no-ui` with devices > 1: start the ranks here and wait (their log lines are rank 0's)."""
    return Launch.check(preset_path, overrides, resume=resume, run_dir=run_dir).run()
