"""Pictures of fronts: the first two objectives of each study's trials, as a PNG and as interactive HTML.

Both read the trials table of :func:`pipeline.search.fronts.trials_frame` (a DataFrame), so this room needs
nothing of the study that made it.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import pandas as pd

from pipeline.measure.registry import Objective

__all__ = ["baseline_rows", "front_labels", "plot_fronts", "plot_fronts_html"]


def baseline_rows(trials: pd.DataFrame) -> pd.DataFrame:
    """The row of the trial that measured the baseline (none when the study has no baseline)."""
    return trials[trials["baseline"]] if "baseline" in trials.columns else trials.iloc[0:0]


def _axes(objectives: tuple[Objective, ...]) -> tuple[Objective, Objective]:
    # The minimised objective (usually latency) on x, the maximised one (usually quality) on y.
    x, y = sorted(objectives[:2], key=lambda o: o.direction != "minimize")
    return x, y


def _parts(trials: pd.DataFrame, x: Objective) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Feasible trials, the front (sorted along x), and trials that ran but broke a constraint."""
    feasible = trials[trials["feasible"]]
    front = feasible[feasible["pareto"]].sort_values(x.metric)
    broken = trials[~trials["feasible"] & (trials["infeasible_reason"] == "")]
    return feasible, front, broken


def plot_fronts(studies: dict[str, pd.DataFrame], objectives: tuple[Objective, ...], path: Path, *,
                title: str) -> Path | None:
    """Draw the first two objectives of each study's trials as a PNG: dominated trials faint, fronts solid.

    Returns:
        ``path``, or None when there is nothing to draw (one objective, no trials).
    """
    if len(objectives) < 2 or all(t.empty for t in studies.values()):
        return None
    x, y = _axes(objectives)
    fig, ax = plt.subplots(figsize=(7.5, 4.8), dpi=120)
    for index, (name, trials) in enumerate(studies.items()):
        if trials.empty:
            continue
        color = f"C{index % 10}"
        feasible, front, broken = _parts(trials, x)
        ax.scatter(feasible[x.metric], feasible[y.metric], color=color, alpha=0.2, s=18)
        if not broken.empty:
            ax.scatter(broken[x.metric], broken[y.metric], marker="x", color=color, alpha=0.3, s=18)
        ax.step(front[x.metric], front[y.metric], where="post", color=color, alpha=0.8)
        ax.scatter(front[x.metric], front[y.metric], color=color, zorder=3, label=f"{name} front")
        for at, label in front_labels(front):
            ax.annotate(label, (front[x.metric].iloc[at], front[y.metric].iloc[at]), textcoords="offset points",
                        xytext=(4, 4), fontsize=7, color=color)
        served = baseline_rows(trials)
        if not served.empty:
            ax.scatter(served[x.metric], served[y.metric], marker="*", s=180, color=color, edgecolors="black",
                       linewidths=0.6, zorder=4, label=f"{name} baseline (served today)")
    ax.set_xlabel(f"{x.metric} ({x.direction})")
    ax.set_ylabel(f"{y.metric} ({y.direction})")
    ax.set_title(f"{title}\n(faint: dominated trials; x: broke a constraint; star: the baseline; #a=#b: tied)",
                 fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(loc="best", fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def plot_fronts_html(studies: dict[str, pd.DataFrame], objectives: tuple[Objective, ...], path: Path, *,
                     title: str, settings: tuple[str, ...]) -> Path | None:
    """The same overlay as :func:`plot_fronts`, interactive (plotly, self-contained HTML: works offline);
    hovering a trial shows its ``settings``."""
    if len(objectives) < 2 or all(t.empty for t in studies.values()):
        return None
    import plotly.graph_objects as go

    x, y = _axes(objectives)
    figure = go.Figure()
    for index, (name, trials) in enumerate(studies.items()):
        if trials.empty:
            continue
        color = _PALETTE[index % len(_PALETTE)]
        feasible, front, _ = _parts(trials, x)
        hover = [", ".join(f"{k}={row[k]}" for k in settings if k in row) for _, row in feasible.iterrows()]
        figure.add_scatter(x=feasible[x.metric], y=feasible[y.metric], mode="markers", name=f"{name} trials",
                           marker={"color": color, "opacity": 0.25}, text=hover,
                           customdata=feasible["number"], hovertemplate="trial %{customdata}<br>%{text}")
        figure.add_scatter(x=front[x.metric], y=front[y.metric], mode="lines+markers", name=f"{name} front",
                           line={"shape": "hv", "color": color}, marker={"size": 9, "color": color},
                           text=[_label(row) for _, row in front.iterrows()],
                           customdata=front["number"], hovertemplate="trial %{customdata} (%{text})")
        served = baseline_rows(trials)
        if not served.empty:
            figure.add_scatter(x=served[x.metric], y=served[y.metric], mode="markers", name=f"{name} baseline",
                               marker={"size": 16, "color": color, "symbol": "star", "line": {"width": 1}},
                               customdata=served["number"], hovertemplate="baseline: trial %{customdata}")
    figure.update_layout(title=title, xaxis_title=f"{x.metric} ({x.direction})",
                         yaxis_title=f"{y.metric} ({y.direction})", template="plotly_white")
    figure.write_html(path, include_plotlyjs=True, full_html=True)
    return path


def front_labels(front: pd.DataFrame) -> list[tuple[int, str]]:
    """The labels the picture draws on a front (sorted along x), with the position of the row each is drawn at:
    ``#7`` for a point tied with no other, and one label for each group of points tied together (the points
    that ``tied_with`` links, directly or through others), ``#11=#13=#15``, at the group's first point. Tied
    points sit close together: a label each, ``#15=#11,#13`` and the rest, would be drawn over one another."""
    numbers = [str(n) for n in front["number"]]
    tied = front["tied_with"] if "tied_with" in front.columns else [""] * len(front)
    groups: list[set[str]] = []
    for number, others in zip(numbers, tied):
        linked = {number, *(n.strip() for n in str(others or "").split(",") if n.strip())}
        for group in [g for g in groups if g & linked]:
            groups.remove(group)
            linked |= group
        groups.append(linked)
    labels, drawn = [], []
    for at, number in enumerate(numbers):
        group = next(g for g in groups if number in g)
        if not any(group is g for g in drawn):
            drawn.append(group)
            labels.append((at, "=".join(f"#{n}" for n in sorted(group, key=_numeric))))
    return labels


def _numeric(number: str) -> tuple[int, str]:
    return (int(number), "") if number.isdigit() else (0, number)


def _label(row: pd.Series) -> str:
    """A front point's label: ``#7``, or ``#7=#3,#9`` when the measurements cannot tell it from those."""
    tied = str(row.get("tied_with") or "")
    return f"#{row['number']}" + ("=" + ",".join(f"#{n.strip()}" for n in tied.split(",")) if tied else "")

_PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f")
