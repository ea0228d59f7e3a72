"""Command line. Argument parsing only; torch and textual are imported when a command runs, so
`--help` stays fast."""

from __future__ import annotations

import argparse
import sys

from tui_trainer import __version__

EXIT_CODES = """\
exit codes:
  0    finished, early-stopped, or stopped by the user (q, Ctrl+C once) after a clean save
  1    training failed (exception, non-finite loss, final checkpoint not written), or the monitor
       crashed (training stopped after a save); see events.jsonl
  2    bad input: preset, command line, paths, checkpoint
  128+N  ended by signal N (SIGTERM 143, SIGHUP 129) after its checkpoint; 130 = Ctrl+C twice (abort)
"""


class _Unset(argparse.Action):
    """`--unset KEY`: into the same list as --set (dest "overrides"), so command-line order is kept."""

    def __call__(self, parser, namespace, values, option_string=None):
        from tui_trainer import config  # a bad key is a one-line UserError, as a bad --set is

        items = list(getattr(namespace, self.dest, None) or [])
        items.append(config.unset_override(values))
        setattr(namespace, self.dest, items)


def _add_overrides(p: argparse.ArgumentParser) -> None:
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a preset key, value read as TOML (repeatable): --set optimizer.lr=0.05")
    p.add_argument("--unset", dest="overrides", action=_Unset, metavar="KEY",
                   help="remove a preset key so its default applies (repeatable; applied in order with --set):"
                        " --set optimizer.name=Adam --unset optimizer.momentum")


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, exit 2 (argparse prints the whole usage)
        self.exit(2, f"tui-trainer: error: {message} (see tui-trainer --help)\n")


def _run_parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="tui-trainer",
        description="Train a PyTorch model from a TOML preset and steer it live from the terminal.",
        epilog="other commands:\n"
        "  tui-trainer preview PRESET.toml   resolved config, layers, planned LR; no training\n"
        "  tui-trainer attach [RUN_DIR]      open the monitor on a running (or finished) run; ssh://host/RUN:\n"
        "                                    on another machine, drawn here (only events cross the link)\n"
        "  tui-trainer ls [RUNS_DIR]         list runs: state, epoch, best, attachable (ssh://host/RUNS_DIR too)\n"
        "  tui-trainer compare RUN_DIR ...   2-6 runs side by side: curves, best values, config differences\n"
        "  tui-trainer export RUN_DIR|CKPT   the model's weights as a plain state_dict (model.load_state_dict)\n\n"
        + EXIT_CODES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("preset", help="preset file, e.g. presets/resnet18_finetune.toml")
    p.add_argument("--no-ui", action="store_true", help="headless: plain log lines (nohup, SLURM, CI)")
    _add_overrides(p)
    p.add_argument("--resume", metavar="PATH|auto", help="continue from a checkpoint; auto = newest last.pt of this preset")
    p.add_argument("--run-dir", metavar="DIR", help="write the run here instead of runs/<name>-<time>/")
    p.add_argument("--paused", action="store_true", help="open the app paused (freeze layers before the first step)")
    p.add_argument("--detach", action="store_true",
                   help="train in the background (headless, logs in the run dir); attach with `tui-trainer attach`")
    p.add_argument("--on-hangup", choices=("stop", "detach"), default="stop",
                   help="when the terminal goes away (SSH drop): stop after a save (default), or keep training"
                        " headless with the control socket open for `tui-trainer attach`")
    p.add_argument("--version", action="version", version=f"tui-trainer {__version__}")
    return p


def _attach_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="tui-trainer attach",
                description="Open the monitor on a run started with --no-ui/--detach (or a TUI run): every pane and"
                            " key works; d or ctrl+c leaves the viewer and the run goes on. A finished run opens"
                            " read-only.")
    p.add_argument("run_dir", nargs="?", metavar="RUN_DIR|ssh://[user@]host[:port]/path/to/run",
                   help="run directory (default: the newest running run under runs/); ssh://host/run watches a run"
                        " on another machine through the system ssh client, drawn here (ssh://host alone: the newest"
                        " running run under the remote runs/)")
    p.add_argument("--remote-cmd", metavar="PATH",
                   help="with ssh://: the tui-trainer program on the remote side (default: $TUI_TRAINER_REMOTE, else"
                        " tui-trainer on the remote login PATH), e.g. ~/venv/bin/tui-trainer")
    p.add_argument("--stdio", action="store_true",
                   help="relay the run's control socket to stdin/stdout (what ssh:// runs on the remote side)")
    return p


def _ls_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="tui-trainer ls", description="List runs with their state, epoch, best metric and whether a"
                                                    " viewer can attach.")
    p.add_argument("runs", nargs="?", metavar="RUNS_DIR|ssh://[user@]host[:port][/path/to/runs]",
                   help="folder of runs (default: runs); ssh://host/path lists the runs on another machine")
    p.add_argument("--remote-cmd", metavar="PATH",
                   help="with ssh://: the tui-trainer program on the remote side (default: $TUI_TRAINER_REMOTE, else"
                        " tui-trainer on the remote login PATH)")
    return p


def _compare_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="tui-trainer compare",
                description="Show 2-6 runs side by side, read-only: their loss and metric curves on one chart (m"
                            " cycles the metric, x the axis, g a log scale), their state and best value, and the"
                            " config.toml keys that differ. Live runs update as they train.")
    p.add_argument("run_dirs", nargs="*", metavar="RUN_DIR",
                   help="run directories (default: the newest --last runs under runs/)")
    p.add_argument("--last", type=int, metavar="N",
                   help="without RUN_DIRs: the N newest runs under runs/ (2-6; default 2)")
    return p


def _preview_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="tui-trainer preview",
                description="Show the resolved preset, the layer table (one dry forward pass) and the planned LR.")
    p.add_argument("preset")
    _add_overrides(p)
    return p


def _export_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="tui-trainer export",
                description="Write a run's model weights as a plain state_dict, loadable as tutorials do it:"
                            ' model.load_state_dict(torch.load("model.pt", weights_only=True)). A "module." (DDP) or "_orig_mod."'
                            " (torch.compile) prefix on every key is removed.")
    p.add_argument("source", metavar="RUN_DIR|CHECKPOINT",
                   help="a run directory (its checkpoints/best.pt, else last.pt) or one checkpoint file")
    p.add_argument("--out", metavar="FILE",
                   help="file to write (default: <run name>-<checkpoint name>.pt in the current folder,"
                        " e.g. tiny-best.pt); its folder must exist")
    p.add_argument("--force", action="store_true", help="overwrite --out if it exists")
    return p


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else list(argv)
    from tui_trainer.errors import UserError, say_error

    try:
        if args and args[0] == "preview":
            opts = _preview_parser().parse_args(args[1:])
            _check_preset(opts.preset, opts.overrides)
            from tui_trainer.run.preview import preview

            return preview(opts.preset, opts.overrides)
        if args and args[0] == "attach":
            opts = _attach_parser().parse_args(args[1:])
            if opts.stdio:  # the remote end of `attach ssh://`: no screen, no textual
                from tui_trainer.run.relay import serve_stdio

                return serve_stdio(opts.run_dir)
            from tui_trainer.ui.launch import run_attach

            return run_attach(opts.run_dir, remote_cmd=opts.remote_cmd)
        if args and args[0] == "ls":
            opts = _ls_parser().parse_args(args[1:])
            if opts.runs is not None and opts.runs.startswith("ssh://"):
                from tui_trainer.run.catalog import remote_ls

                return remote_ls(opts.runs, opts.remote_cmd)
            from tui_trainer.run.catalog import check_runs_folder, format_runs, list_runs

            if opts.runs is not None:  # a folder given must exist; runs/ not made yet is just no runs
                check_runs_folder(opts.runs)
            base = "runs" if opts.runs is None else opts.runs
            print(format_runs(list_runs(base), base))
            return 0
        if args and args[0] == "compare":
            opts = _compare_parser().parse_args(args[1:])
            from tui_trainer.run.history import newest_runs, open_runs

            if opts.run_dirs and opts.last is not None:
                raise UserError("give RUN_DIRs or --last N, not both", source="compare")
            runs = open_runs(opts.run_dirs or newest_runs(2 if opts.last is None else opts.last))
            if not (sys.stdin.isatty() and sys.stdout.isatty()):  # the screen would wait for keys forever
                raise UserError("draws its screen in a terminal, and stdin or stdout is not one; run it in a"
                                " terminal (over SSH: ssh -t HOST tui-trainer compare ...)", source="compare")
            from tui_trainer.ui.compare import run_compare

            return run_compare(runs)
        if args and args[0] == "export":
            opts = _export_parser().parse_args(args[1:])
            from tui_trainer.run.export import export

            return export(opts.source, opts.out, force=opts.force)
        return _train(_run_parser().parse_args(args))
    except UserError as err:
        say_error(err)
        return err.exit_code
    except KeyboardInterrupt:
        print("tui-trainer: aborted", file=sys.stderr)
        return 130


def _check_preset(path: str, overrides: list[str]):
    """Validate the preset before torch is imported: a typo costs milliseconds, not seconds."""
    from tui_trainer import config

    return config.load(path, overrides)


def _train(opts: argparse.Namespace) -> int:
    import os

    preset = _check_preset(opts.preset, opts.overrides)
    if opts.detach:
        from tui_trainer.run.detach import detach

        return detach(opts.preset, opts.overrides, resume=opts.resume, run_dir=opts.run_dir)
    if preset.train.devices != 1 and "WORLD_SIZE" not in os.environ:  # not already a rank (torchrun, SLURM)
        if not opts.no_ui and sys.stdin.isatty() and sys.stderr.isatty():
            from tui_trainer.ui.launch import run_ranks_app

            return run_ranks_app(opts.preset, opts.overrides, resume=opts.resume, run_dir=opts.run_dir,
                                 on_hangup=opts.on_hangup)
        from tui_trainer.run.ranks import launch

        return launch(opts.preset, opts.overrides, resume=opts.resume, run_dir=opts.run_dir)
    interactive = sys.stdin.isatty() and sys.stderr.isatty()
    if not opts.no_ui and not interactive:
        print("tui-trainer: no terminal on stdin/stderr; running headless (--no-ui)", file=sys.stderr)
    if opts.no_ui or not interactive:
        from tui_trainer.run.headless import run_headless

        return run_headless(opts.preset, opts.overrides, resume=opts.resume, run_dir=opts.run_dir, serve=True)
    from tui_trainer.ui.launch import run_app

    return run_app(opts.preset, opts.overrides, resume=opts.resume, run_dir=opts.run_dir, paused=opts.paused,
                   on_hangup=opts.on_hangup)
