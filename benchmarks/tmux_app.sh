#!/usr/bin/env bash
# The app in a real terminal: the tiny workload through the real CLI, headless, in a 120x40 tmux
# pane, and as `--detach` + `attach` (engine and viewer in two processes) in the same pane; prints
# steps/s over the same window (from each run's events.jsonl) and each against headless.
# Run by hand on a quiet machine:  bash benchmarks/tmux_app.sh [rounds]
set -euo pipefail
cd "$(dirname "$0")/.."
py=${PYTHON:-.venv/bin/python}
rounds=${1:-3}
scratch=$(mktemp -d)
trap 'tmux kill-session -t tt-bench 2>/dev/null || true; rm -rf "$scratch"' EXIT
"$py" -c "from benchmarks.workloads import TINY; open('$scratch/tiny.toml', 'w').write(TINY.preset_text())"
for i in $(seq "$rounds"); do
  rm -rf "$scratch/h" "$scratch/t" "$scratch/d"
  OMP_NUM_THREADS=1 "$py" -m tui_trainer "$scratch/tiny.toml" --no-ui --run-dir "$scratch/h" > "$scratch/h.log" 2>&1
  tmux new -d -s tt-bench -x 120 -y 40 \
    "unset COLUMNS LINES; OMP_NUM_THREADS=1 $py -m tui_trainer $scratch/tiny.toml --run-dir $scratch/t; sleep 60"
  until tmux capture-pane -p -t tt-bench | grep -q "q or Enter to leave"; do sleep 1; done
  tmux kill-session -t tt-bench
  tmux new -d -s tt-bench -x 120 -y 40 "unset COLUMNS LINES; OMP_NUM_THREADS=1 $py -m tui_trainer \
    $scratch/tiny.toml --detach --run-dir $scratch/d && $py -m tui_trainer attach $scratch/d; sleep 60"
  until tmux capture-pane -p -t tt-bench | grep -q "q or Enter to leave"; do sleep 1; done
  tmux kill-session -t tt-bench
  "$py" -c "
from pathlib import Path
from benchmarks.common import window_rate
from benchmarks.workloads import TINY
h = window_rate(Path('$scratch/h'), TINY.warmup, TINY.steps)
t = window_rate(Path('$scratch/t'), TINY.warmup, TINY.steps)
d = window_rate(Path('$scratch/d'), TINY.warmup, TINY.steps)
print(f'round $i: headless {h:,.1f} steps/s | tui {t:,.1f} ({t / h:.3f} of headless)'
      f' | detach+attach {d:,.1f} ({d / h:.3f})')"
done
