"""The train stage's summary: the first and last logged windows of train/log side by side."""

from __future__ import annotations

import pyarrow as pa

SHOWN = ("loss", "rewards/chosen", "rewards/rejected", "penalty", "grad_norm", "items_per_s")


def training_table(log: pa.Table) -> list[str]:
    """Lines: each metric at the first and the last logged step, pair accuracies and margins
    (level i against level j) included."""
    rows = log.to_pylist()
    if not rows:
        return []
    steps = sorted({row["step"] for row in rows})
    first, last = steps[0], steps[-1]
    values = {(row["step"], row["metric"]): row["value"] for row in rows}
    metrics = sorted({row["metric"] for row in rows})
    pairs = [m for m in metrics if m.startswith(("accuracy/", "margin/"))]
    shown = [m for m in SHOWN if m in metrics] + pairs + (["nll"] if "nll" in metrics else [])
    lines = [f"    {'metric':<20} {'step ' + str(first):>12} {'step ' + str(last):>12}"]
    for metric in shown:
        lines.append(
            f"    {metric:<20} {values.get((first, metric), float('nan')):>12.4f} "
            f"{values.get((last, metric), float('nan')):>12.4f}"
        )
    return lines
