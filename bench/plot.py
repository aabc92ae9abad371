"""Figures for the benchmark pages, drawn with matplotlib.

`panels(path, [Panel(...), ...], xlabel=..., caption=...)` draws panels side by side, each a
set of line series against a number of hosts H on a log-2 axis with a tick at every measured H,
and optionally a dashed goal line; the format follows the file's suffix (`.svg` for the docs).
matplotlib is a dev dependency (setup.cfg's `dev` extra), imported only here, so a benchmark
that is not asked for a figure runs without it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

GOAL_COLOUR = "#c00"


@dataclass(frozen=True, slots=True)
class Series:
    """One line: value per H, in the order of H."""

    label: str
    points: Mapping[int, float]
    colour: str


@dataclass(frozen=True, slots=True)
class Panel:
    """One plot: its title, the unit of its y axis, its lines, and an optional goal line."""

    title: str
    unit: str
    series: Sequence[Series]
    goal: float | None = None
    goal_label: str = ""


def panels(path: Path, figures: Sequence[Panel], *, xlabel: str, caption: str = "") -> None:
    """Draw `figures` side by side into `path` (format from its suffix).

    Raises ValueError when a panel has no point at all (nothing to scale the axes by).
    """
    from matplotlib.figure import Figure  # here, not at the top: only figures pay for it

    fig = Figure(figsize=(4.1 * len(figures), 3.6), layout="constrained")
    axes = fig.subplots(1, len(figures), squeeze=False)[0]
    for ax, panel in zip(axes, figures, strict=True):
        hosts = sorted({h for s in panel.series for h in s.points})
        if not hosts:
            raise ValueError(f"panel {panel.title!r} has no points")
        for s in panel.series:
            xs = sorted(s.points)
            ax.plot(xs, [s.points[h] for h in xs], "o-", color=s.colour, label=s.label, ms=4)
        if panel.goal is not None:
            ax.axhline(panel.goal, color=GOAL_COLOUR, linestyle="--", linewidth=1)
            ax.annotate(
                panel.goal_label,
                (1.0, panel.goal),
                xycoords=("axes fraction", "data"),
                xytext=(-4, 4),
                textcoords="offset points",
                ha="right",
                color=GOAL_COLOUR,
                fontsize=9,
            )
        ax.set_xscale("log", base=2)
        ax.set_xticks(hosts, [str(h) for h in hosts])
        ax.minorticks_off()
        # Headroom above the highest point or goal, so that the legend and the goal's label sit
        # above the lines rather than on them.
        values = [v for s in panel.series for v in s.points.values()]
        top = max([*values, panel.goal if panel.goal is not None else 0.0])
        ax.set_ylim(0, top * 1.3 if top > 0 else 1.0)
        ax.set_title(panel.title, fontsize=10, fontweight="bold")
        ax.set_xlabel(xlabel)
        ax.set_ylabel(panel.unit)
        ax.legend(loc="upper left", fontsize=9, frameon=False)
    if caption:
        fig.supxlabel(caption, fontsize=8, color="#555")
    fig.savefig(path)
