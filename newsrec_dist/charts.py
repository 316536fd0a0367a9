"""PNG charts (matplotlib, headless) for reports and benchmarks."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np


@contextlib.contextmanager
def chart(path: Path, panels: int = 1, width: float = 6.0, height: float = 3.5) -> Iterator[list[Any]]:
    """Axes of a new figure (``panels`` side by side), saved to ``path`` when the block ends without error."""
    import matplotlib

    matplotlib.use("Agg")  # no display on servers and CI
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, panels, figsize=(width * panels, height), squeeze=False)
    try:
        yield list(axes[0])
        figure.tight_layout()
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        figure.savefig(path, dpi=110)
    finally:
        plt.close(figure)


def line_chart(path: Path, title: str, xlabel: str, ylabel: str,
               lines: Mapping[str, tuple[Sequence[float], Sequence[float]]]) -> None:
    """One line per name from its (x, y) points, e.g. training loss by step per model."""
    with chart(path) as (axis,):
        for name, (xs, ys) in lines.items():
            axis.plot(xs, ys, marker="." if len(xs) < 30 else None, label=name)
        axis.set(title=title, xlabel=xlabel, ylabel=ylabel)
        axis.grid(alpha=0.3)
        axis.legend(fontsize="small")


def grouped_bars(path: Path, title: str, categories: Sequence[str],
                 panels: Mapping[str, Mapping[str, Sequence[float]]]) -> None:
    """A panel per metric; in each, a group of bars per category with one bar per series (e.g. per model)."""
    with chart(path, panels=len(panels), width=max(4.5, 0.9 * len(categories) + 2)) as axes:
        for axis, (metric, series) in zip(axes, panels.items()):
            width = 0.8 / len(series)
            positions = np.arange(len(categories))
            for index, (name, values) in enumerate(series.items()):
                axis.bar(positions + (index - (len(series) - 1) / 2) * width, values, width, label=name)
            low = min(min(values) for values in series.values())
            high = max(max(values) for values in series.values())
            margin = (high - low) * 0.2 or abs(high) * 0.05 or 0.01
            axis.set(title=f"{title}: {metric}", ylabel=metric, ylim=(low - margin, high + margin))
            crowded = len(categories) > 4 or max(map(len, categories)) > 6
            axis.set_xticks(positions, categories, rotation=30 if crowded else 0, ha="right" if crowded else "center")
            axis.grid(axis="y", alpha=0.3)
            if len(series) > 1:
                axis.legend(fontsize="small")


def horizontal_bars(path: Path, title: str, xlabel: str, values: Mapping[str, float]) -> None:
    """One bar per name, largest readable at a glance (stage timings)."""
    with chart(path, height=0.35 * len(values) + 1.2) as (axis,):
        names = list(values)[::-1]
        axis.barh(names, [values[name] for name in names])
        axis.set(title=title, xlabel=xlabel)
        axis.grid(axis="x", alpha=0.3)
