"""The Pareto front of a study: a table of its trials and a plot of the front.

Which trials are on the front is Optuna's decision (``Study.best_trials``: feasible trials only when the
study has constraints); this module only arranges and draws it.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import optuna  # noqa: E402
import pandas as pd  # noqa: E402

from pipeline.config import Objective  # noqa: E402

__all__ = ["front_frame", "plot_front", "trials_frame"]


def trials_frame(study: optuna.Study, objectives: tuple[Objective, ...]) -> pd.DataFrame:
    """One row per completed trial: number, settings, every metric, feasibility and front membership."""
    front = {t.number for t in study.best_trials}
    rows = []
    for trial in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)):
        row = {"number": trial.number, "pareto": trial.number in front,
               "feasible": all(v <= 0 for v in trial.constraints.values()),
               "infeasible_reason": trial.user_attrs.get("infeasible", ""),
               "mlflow_run_id": trial.user_attrs.get("mlflow_run_id")}
        row.update(trial.params)
        row.update(trial.user_attrs.get("metrics", {}))
        for objective, value in zip(objectives, trial.values):
            row[objective.metric] = value
        rows.append(row)
    return pd.DataFrame(rows)


def front_frame(trials: pd.DataFrame, objectives: tuple[Objective, ...]) -> pd.DataFrame:
    """The front's rows, best first by the first objective."""
    if trials.empty:
        return trials
    first = objectives[0]
    return trials[trials["pareto"]].sort_values(first.metric, ascending=first.direction == "minimize")


def plot_front(trials: pd.DataFrame, objectives: tuple[Objective, ...], path: Path, *, title: str) -> Path | None:
    """Draw the first two objectives of every feasible trial, the front highlighted; None with one objective."""
    if len(objectives) < 2 or trials.empty:
        return None
    # Put the minimised objective (usually latency) on x, the maximised one (usually quality) on y.
    x, y = sorted(objectives[:2], key=lambda o: o.direction != "minimize")
    feasible = trials[trials["feasible"]]
    front = feasible[feasible["pareto"]].sort_values(x.metric)
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    ax.scatter(feasible[x.metric], feasible[y.metric], color="0.6", alpha=0.5, label="feasible trial")
    infeasible = trials[~trials["feasible"] & (trials["infeasible_reason"] == "")]
    if not infeasible.empty:
        ax.scatter(infeasible[x.metric], infeasible[y.metric], marker="x", color="tab:red", alpha=0.5,
                   label="breaks a constraint")
    ax.step(front[x.metric], front[y.metric], where="post", color="tab:blue", alpha=0.7)
    ax.scatter(front[x.metric], front[y.metric], color="tab:blue", zorder=3, label="Pareto front")
    for _, row in front.iterrows():
        ax.annotate(f"#{row['number']}", (row[x.metric], row[y.metric]), textcoords="offset points",
                    xytext=(4, 4), fontsize=8)
    ax.set_xlabel(f"{x.metric} ({x.direction})")
    ax.set_ylabel(f"{y.metric} ({y.direction})")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(loc="best", fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path
