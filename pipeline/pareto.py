"""The Pareto front of a study: a table of its trials and a plot of the front.

Which trials are on the front is Optuna's decision (``Study.best_trials``: feasible trials only when the
study has constraints); this module only arranges and draws it.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import optuna  # noqa: E402
from optuna.study._multi_objective import _get_pareto_front_trials_by_trials  # noqa: E402
import pandas as pd  # noqa: E402

from pipeline.config import CORE_PARAMETERS, OPTIONAL_PARAMETERS, Objective  # noqa: E402
from pipeline.racing import bounds_of, ties  # noqa: E402

__all__ = ["BASELINE", "RACED", "REMEASURES", "REUSED", "SETTINGS", "TOPS_UP", "baseline_rows", "front_bounds",
           "front_frame", "front_trials", "measured_trials", "plot_fronts", "plot_fronts_html", "superseded",
           "trials_frame"]

# User attr of a trial that was not measured: its settings had been, by the trial it names (see reuse.py).
REUSED = "same_as"
# User attr (and MLflow tag) of the trial that measured the config's baseline: the settings served today.
BASELINE = "baseline"
# User attr (and MLflow tag) of a trial that racing stopped: why (pipeline.racing).
RACED = "raced"
# User attr (and MLflow tag) of a trial that topped up an earlier one: the earlier trial's number. Its records
# are the earlier trial's and more; the earlier trial is superseded (kept in the storage, left out of everything).
TOPS_UP = "tops_up"
# User attr of a trial that measured a setting again from scratch (its first measurement ran while the machine's
# speed moved: pipeline.drift): the earlier trial's number, which it supersedes.
REMEASURES = "remeasures"


def superseded(study: optuna.Study) -> set[int]:
    """Numbers of the trials a later trial topped up with more requests or measured again."""
    return {t.user_attrs[attr] for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
            for attr in (TOPS_UP, REMEASURES) if attr in t.user_attrs}


def measured_trials(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    """Completed trials that measured their settings (not answered from an earlier trial), each setting by its
    latest measurement (not superseded by a top-up)."""
    gone = superseded(study)
    return [t for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
            if REUSED not in t.user_attrs and t.number not in gone]


def front_trials(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    """The front of the measured trials, each setting once, by Optuna's rule (as ``Study.best_trials``: feasible
    trials only when the study has constraints). A trial racing stopped is not a candidate: a front point beat it
    on the same requests, though its estimate on those few requests may look better than that point's own over
    all of them."""
    trials = [t for t in measured_trials(study) if RACED not in t.user_attrs]
    constrained = any(t.constraints for t in trials)
    return _get_pareto_front_trials_by_trials(trials, study.directions, consider_constraint=constrained)


def front_bounds(study: optuna.Study, objectives: tuple[Objective, ...]) -> list[tuple[int, np.ndarray]]:
    """The front points' numbers and their intervals (``racing.bounds_of``), as racing compares with them."""
    return [(t.number, bounds_of(t.user_attrs.get("metrics") or _values(t, objectives), objectives))
            for t in front_trials(study)]


def trials_frame(study: optuna.Study, objectives: tuple[Objective, ...]) -> pd.DataFrame:
    """One row per measured setting (its latest trial): number, settings, every metric, feasibility (and why not:
    the context does not fit, or the trial was stopped early), why racing stopped it, the trial it topped up,
    front membership, and the front points it is tied with (``racing.ties``)."""
    front = front_trials(study)
    tied = ties({t.number: bounds_of(t.user_attrs.get("metrics", {}) or _values(t, objectives), objectives)
                 for t in front})
    drifted = study.user_attrs.get("drift", {})
    rows = []
    for trial in measured_trials(study):
        row = {"number": trial.number, "pareto": trial.number in tied,
               "tied_with": ", ".join(str(n) for n in tied.get(trial.number, [])),
               "feasible": all(v <= 0 for v in trial.constraints.values()),
               "infeasible_reason": trial.user_attrs.get("infeasible", ""),
               "aborted": trial.user_attrs.get("aborted", ""),
               RACED: trial.user_attrs.get(RACED, ""),
               "drift": drifted.get(str(trial.number), ""),
               "reference_ms": trial.user_attrs.get("reference_ms"),
               TOPS_UP: trial.user_attrs.get(TOPS_UP),
               "mlflow_run_id": trial.user_attrs.get("mlflow_run_id"),
               "baseline": bool(trial.user_attrs.get(BASELINE))}
        row.update(trial.params)
        row.update(trial.user_attrs.get("metrics", {}))
        for objective, value in zip(objectives, trial.values):
            row[objective.metric] = value
        rows.append(row)
    return pd.DataFrame(rows)


def _values(trial: optuna.trial.FrozenTrial, objectives: tuple[Objective, ...]) -> dict[str, float]:
    return {o.metric: v for o, v in zip(objectives, trial.values)}


def baseline_rows(trials: pd.DataFrame) -> pd.DataFrame:
    """The row of the trial that measured the baseline (none when the study has no baseline)."""
    return trials[trials["baseline"]] if "baseline" in trials.columns else trials.iloc[0:0]


def front_frame(trials: pd.DataFrame, objectives: tuple[Objective, ...]) -> pd.DataFrame:
    """The front's rows, best first by the first objective."""
    if trials.empty:
        return trials
    first = objectives[0]
    return trials[trials["pareto"]].sort_values(first.metric, ascending=first.direction == "minimize")


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
        for _, row in front.iterrows():
            ax.annotate(_label(row), (row[x.metric], row[y.metric]), textcoords="offset points",
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
                     title: str) -> Path | None:
    """The same overlay as :func:`plot_fronts`, interactive (plotly, self-contained HTML: works offline)."""
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
        hover = [", ".join(f"{k}={row[k]}" for k in SETTINGS if k in row) for _, row in feasible.iterrows()]
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


def _label(row: pd.Series) -> str:
    """A front point's label: ``#7``, or ``#7=#3,#9`` when the measurements cannot tell it from those."""
    tied = str(row.get("tied_with") or "")
    return f"#{row['number']}" + ("=" + ",".join(f"#{n.strip()}" for n in tied.split(",")) if tied else "")


SETTINGS = (*CORE_PARAMETERS, *OPTIONAL_PARAMETERS)
_PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f")
