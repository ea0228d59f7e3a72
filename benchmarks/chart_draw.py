"""The Loss pane's chart: what one draw costs the UI thread, and what the history holds, at 1k,
100k and 1M steps (issue 15).

    python benchmarks/chart_draw.py            # 1k / 100k / 1M steps, the app's chart sizes
    python benchmarks/chart_draw.py --quick    # 1k / 10k steps

A RunView is fed real StepReport and EpochEnd events (a report every 10 steps, an epoch every
1,000; noisy losses with one spike), then the chart text (tui_trainer/ui/widgets/loss_chart.py:
`chart`, which the pane hands to a Static) is built at the sizes the pane has: 44x6 (120x40, every
pane) and 76x11 (80x24, the Loss pane alone), linear and log, and for a per-epoch metric. Process
CPU time per draw, the best of 7 rounds of 10 draws: the cost without the other tenants' noise. At
2 Hz a 1 ms draw is 0.2% of a core. Also the bytes the loss history holds (its arrays' buffers).
"""

from __future__ import annotations

import math
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import common  # noqa: E402

SIZES = ((44, 6), (76, 11))


def fed(steps: int):
    from tui_trainer.engine import events as ev
    from tui_trainer.parts.optim import LrPlan
    from tui_trainer.ui.view import RunView

    view = RunView()
    plan = LrPlan(groups=("default",), steps=(0,), lrs=((0.1,),), total_steps=steps, adaptive=False)
    view.apply(ev.RunStarted(run_name="bench", run_dir="/tmp/bench", device="cpu", device_name="cpu", amp="off",
                             epochs=max(1, steps // 1000), steps_per_epoch=1000, total_steps=steps, batch_size=8,
                             start_step=0, start_epoch=1, layers=(), trainable=(), params_total=0,
                             params_trainable=0, plan=plan, lrs=(0.1,), manual_factor=1.0, weights="none",
                             data="none", monitor="val_loss", time=0.0))
    rng = random.Random(0)
    for step in range(10, steps + 1, 10):
        losses = tuple(50.0 if s == steps // 3 else 2.0 * math.exp(-s / (steps / 5)) + 0.2 * rng.random()
                       for s in range(step - 9, step + 1))
        view.apply(ev.StepReport(step, step // 1000 + 1, step - 9, losses, (0.1,), 1.0, 1.0, time=float(step)))
        if step % 1000 == 0:
            e = step // 1000
            view.apply(ev.EpochEnd(e, step, losses[-1], 1.0 / e, 0.5, 0.1, "val_loss", 1.0 / e, 1.0 / e, e, True, 0,
                                   None, metrics={"val_dice": 1 - 1.0 / (e + 1)}, time=float(step)))
    return view


def per_draw_ms(draw, rounds: int = 7, n: int = 10) -> float:
    best = math.inf
    for _ in range(rounds):
        t = time.process_time()
        for _ in range(n):
            draw()
        best = min(best, (time.process_time() - t) / n)
    return best * 1e3


def measure(steps: int) -> dict:
    from tui_trainer.ui.widgets.loss_chart import chart

    t = time.process_time()
    view = fed(steps)
    feed_s = time.process_time() - t
    row = {"steps": steps, "feed_cpu_s": feed_s, "buckets": len(view.loss), "per_bucket": view.loss.per_bucket,
           "loss_history_bytes": sum(c.buffer_info()[1] * c.itemsize for s in (view.loss, view.loss_ema)
                                     for c in (s.xs, s.lo, s.hi, s.sums, s.counts)),
           "draw_ms": {}}
    for w, h in SIZES:
        for metric, log in (("train_loss", False), ("train_loss", True), ("val_dice", False)):
            row["draw_ms"][f"{metric}{' log' if log else ''} {w}x{h}"] = per_draw_ms(
                lambda: chart(view, metric, log, w, h))
    return row


def main(argv: list[str] | None = None) -> dict:
    p = common.parser(__doc__.splitlines()[0])
    args = p.parse_args(argv)
    steps = (1_000, 10_000) if args.quick else (1_000, 100_000, 1_000_000)
    rows = []
    for n in steps:
        row = measure(n)
        rows.append(row)
        draws = "  ".join(f"{k} {v:.2f}" for k, v in row["draw_ms"].items())
        print(f"{n:>9,} steps: {row['buckets']:>4} buckets of {row['per_bucket']:>3} steps,"
              f" loss history {row['loss_history_bytes'] / 1024:5.1f} KiB; ms per draw: {draws}", flush=True)
    result = {"versions": common.versions(), "quick": args.quick, "rows": rows}
    common.write_json(args.json, result)
    return result


if __name__ == "__main__":
    main()
