"""A study's front in words: what it holds, and when it is empty or thin, why and what to change.

:func:`front_explanation` says, for a front of fewer than two points, how many trials broke each constraint and
the value the closest of them reached, which trials stopped early and why, and the most likely fix in the config's
own terms.
:func:`study_note` is the parent run's description (MLflow's ``mlflow.note.content``): that explanation, or a
short summary of the front.
"""

from __future__ import annotations

import pandas as pd

from pipeline.measure.registry import Constraint, lookup
from pipeline.search.config import StudyConfig

__all__ = ["front_explanation", "study_note"]


def _shown(value: float) -> str:
    return f"{value:.3g}" if abs(value) < 100 else f"{value:.0f}"


def _fix(constraint: Constraint, broken: pd.DataFrame) -> str:
    """The most likely change that lets trials meet ``constraint``, in the config's terms."""
    cut = broken["truncated_answers"].fillna(0) if "truncated_answers" in broken else pd.Series(dtype=float)
    if constraint.metric in ("schema_valid_rate", "parse_rate", "exact_match_rate") and cut.gt(0).any():
        return (f"answers were cut at num_predict in {int(cut.gt(0).sum())} of them: raise num_predict "
                "(search_space.num_predict)")
    limit = constraint.min if constraint.min is not None else constraint.max
    declared = lookup(constraint.metric)
    if declared is not None and declared.shown:
        return (f"judged at its 95% interval's {'upper' if constraint.max is not None else 'lower'} end: more "
                "requests narrow it (a longer traffic, evaluation.limit)")
    if declared is not None and declared.role == "latency":
        return (f"loosen constraints.{constraint.metric} (max {limit:g}), or search faster settings (fewer "
                "examples, a smaller num_predict or num_ctx)")
    side = "min" if constraint.min is not None else "max"
    return f"loosen constraints.{constraint.metric} ({side} {limit:g})"


def front_explanation(trials: pd.DataFrame, front: pd.DataFrame, config: StudyConfig) -> list[str]:
    """Why the front has fewer than two points, line by line (none when it has two or more).

    Returns:
        Lines: which constraint each broken trial broke and the best value reached, the settings that could not
        fit their context, the trials stopped early, and what to change.
    """
    if len(front) >= 2:
        return []
    if trials.empty:
        return ["no trial completed: see the failed trials' `failure` in Optuna (or their MLflow runs) for why"]
    lines = [f"the front has {len(front)} point{'s' if len(front) != 1 else ''}: "
             f"{int(trials['feasible'].sum())} of {len(trials)} measured trials met every constraint"]
    measured = trials[trials["infeasible_reason"].fillna("") == ""]
    for constraint in config.constraints:
        if constraint.metric not in measured or measured.empty:
            continue
        values = measured.apply(lambda row: constraint.reading(row.dropna().to_dict()), axis=1).astype(float)
        broken = measured[values.map(constraint.breaks)]
        if broken.empty:
            continue
        closest = values[broken.index]
        best = closest.max() if constraint.min is not None else closest.min()
        lines.append(f"{constraint.describe()}: broken by {len(broken)} of {len(measured)} trials, the closest "
                     f"reached {_shown(best)}; {_fix(constraint, broken)}")
    unfit = trials[trials["infeasible_reason"].fillna("") != ""]
    if not unfit.empty:
        lines.append(f"{len(unfit)} trials could not run as set ({unfit['infeasible_reason'].iloc[0]}); raise "
                     "num_ctx (search_space.num_ctx) or use fewer examples (search_space.few_shot)")
    for row in trials[trials["aborted"].fillna("") != ""].itertuples():
        lines.append(f"trial {row.number} {row.aborted}")
    return lines


def study_note(trials: pd.DataFrame, front: pd.DataFrame, config: StudyConfig, explanation: list[str]) -> str:
    """The parent run's description (Markdown): the front's points in short, and ``explanation``
    (:func:`front_explanation`) when the front is empty or thin."""
    title = f"Study **{config.study.name}**: {len(trials)} measured trials, a front of {len(front)}."
    objectives = [o.metric for o in config.objectives]
    points = []
    for _, row in front.iterrows():
        values = ", ".join(f"{m} {_shown(float(row[m]))}" for m in objectives if pd.notna(row.get(m)))
        points.append(f"- trial {row['number']}{' (baseline)' if row.get('baseline', False) else ''}: {values}")
    return "\n".join([title, "", *points, *([""] if points and explanation else []),
                      *(f"- {line}" for line in explanation)])
