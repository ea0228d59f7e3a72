"""`tui-trainer preview PRESET`: resolved config, layer table with output shapes, planned LR."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table

from tui_trainer import config
from tui_trainer.parts.layers import trainable_state
from tui_trainer.parts.optim import LrPlan
from tui_trainer.text.format import human_count


def preview(path: str, overrides: list[str]) -> int:
    from tui_trainer.parts import build
    from tui_trainer.run.headless import epochs_text

    preset = config.load(path, overrides)
    parts = build(preset)
    console = Console(highlight=False)
    console.rule(f"[bold]{preset.name}[/bold]  resolved preset ({path})")
    console.print(config.dump_toml(preset), markup=False)
    console.rule("layers (output shapes from one dry forward pass)")
    table = Table(box=None, pad_edge=False)
    for col, justify in (("layer", "left"), ("type", "left"), ("output", "left"), ("params", "right"),
                         ("train", "center")):
        table.add_column(col, justify=justify)
    state = trainable_state(parts.model, parts.layers)
    for row, on in zip(parts.layers, state):
        shape = "x".join(map(str, row.out_shape[1:])) if row.out_shape else "-"
        mark = {True: "on", False: "off", None: "mixed"}[on]
        table.add_row("  " * row.depth + row.name.split(".")[-1], row.type, shape, human_count(row.params), mark)
    console.print(table)
    total = sum(p.numel() for p in parts.model.parameters())
    trainable = sum(p.numel() for p in parts.model.parameters() if p.requires_grad)
    console.print(f"params: {total:,} total, {trainable:,} trainable | device {parts.device_name} |"
                  f" weights {parts.weights_note} | {parts.data.note}", markup=False)
    for warning in parts.warnings:
        console.print(f"WARNING {warning}", style="yellow", markup=False)
    console.rule(f"planned LR: {parts.total_steps} steps ({epochs_text(preset.train.epochs)} x {parts.steps_per_epoch})")
    console.print(plot_plan(parts.plan, width=min(console.width, 100)), markup=False, soft_wrap=True)
    return 0


def plot_plan(plan: LrPlan, width: int = 80, height: int = 12) -> str:
    """The planned LR of every group as a plain-text braille plot (the app's LR pane draws the same
    curves in colour) and, since a log file has no colour to tell groups apart, each group's start,
    peak and end in numbers."""
    from tui_trainer.text.plot import braille_plot

    series = [(list(plan.steps), list(lrs), "") for lrs in plan.lrs]
    top = max((max(lrs) for lrs in plan.lrs if lrs), default=0.0) or 1.0
    plot = braille_plot(series, width, height, (0, max(plan.total_steps, 1)), (0.0, top * 1.05)).plain
    lines = [line.rstrip() for line in plot.splitlines()] + ["step".center(width).rstrip()]
    if plan.adaptive:
        lines.insert(0, "ReduceLROnPlateau: lowered on plateaus; no future is planned")
    name_w = max(len("group"), *(len(n) for n in plan.groups))
    lines.append(f"{'group'.ljust(name_w)}  {'start':>9}  {'peak':>18}  {'end':>9}")
    for name, lrs in zip(plan.groups, plan.lrs):
        if not lrs:
            continue
        peak = max(range(len(lrs)), key=lrs.__getitem__)
        lines.append(f"{name.ljust(name_w)}  {lrs[0]:>9.4g}  {f'{lrs[peak]:.4g} (step {plan.steps[peak]})':>18}"
                     f"  {lrs[-1]:>9.4g}")
    return "\n".join(lines)
