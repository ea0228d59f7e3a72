#!/usr/bin/env bash
# The app in a real terminal: the tiny workload through the real CLI, once headless and once in a
# 120x40 tmux pane, alternating; prints steps/s over the same window (from each run's events.jsonl)
# and TUI / headless. Run by hand on a quiet machine:  bash benchmarks/tmux_app.sh [pairs]
set -euo pipefail
cd "$(dirname "$0")/.."
py=${PYTHON:-.venv/bin/python}
pairs=${1:-3}
scratch=$(mktemp -d)
trap 'tmux kill-session -t tt-bench 2>/dev/null || true; rm -rf "$scratch"' EXIT
"$py" -c "from benchmarks.workloads import TINY; open('$scratch/tiny.toml', 'w').write(TINY.preset_text())"
for i in $(seq "$pairs"); do
  rm -rf "$scratch/h" "$scratch/t"
  OMP_NUM_THREADS=1 "$py" -m tui_trainer "$scratch/tiny.toml" --no-ui --run-dir "$scratch/h" > "$scratch/h.log" 2>&1
  tmux new -d -s tt-bench -x 120 -y 40 \
    "unset COLUMNS LINES; OMP_NUM_THREADS=1 $py -m tui_trainer $scratch/tiny.toml --run-dir $scratch/t; sleep 60"
  until tmux capture-pane -p -t tt-bench | grep -q "q or Enter to leave"; do sleep 1; done
  tmux kill-session -t tt-bench
  "$py" -c "
from pathlib import Path
from benchmarks.common import window_rate
from benchmarks.workloads import TINY
h = window_rate(Path('$scratch/h'), TINY.warmup, TINY.steps)
t = window_rate(Path('$scratch/t'), TINY.warmup, TINY.steps)
print(f'pair $i: headless {h:,.1f} steps/s  tui in tmux {t:,.1f} steps/s  tui/headless {t / h:.3f}')"
done
