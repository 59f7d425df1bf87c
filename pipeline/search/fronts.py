"""The Pareto front of a study: which trials are on it, and a table of its trials.

Which trials are on the front is Optuna's decision (``Study.best_trials``: feasible trials only when the
study has constraints); this module only arranges it (the pictures: :mod:`pipeline.render.plots`).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import optuna
import pandas as pd

from pipeline.engines.serving import CONCURRENCY
from pipeline.engines.settings import CORE_PARAMETERS
from pipeline.errors import PipelineError
from pipeline.measure.bottleneck import verdict
from pipeline.measure.intervals import ERROR_RATE
from pipeline.measure.racing import bounds_of, tied_points
from pipeline.measure.records import RequestRecord
from pipeline.measure.registry import Objective, feasible
from pipeline.render.plots import baseline_rows
from pipeline.search._optuna import is_pareto_front, pareto_front_trials
from pipeline.search.config import OPTIONAL_PARAMETERS
from pipeline.search.trials import (
    ABORTED,
    BASELINE,
    BOTTLENECK,
    DRIFT,
    INFEASIBLE,
    METRICS,
    RACED,
    REFERENCE,
    REMEASURES,
    REUSED,
    RUN_ID,
    TOPS_UP,
)

__all__ = ["BASELINE", "RACED", "REMEASURES", "REUSED", "SETTINGS", "TOPS_UP", "baseline_rows", "front_bounds",
           "front_frame", "front_trials", "is_pareto_front", "measured_trials", "superseded", "trials_frame"]


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
    return pareto_front_trials(trials, study.directions, consider_constraint=constrained)


def front_bounds(study: optuna.Study, objectives: tuple[Objective, ...]) -> list[tuple[int, np.ndarray]]:
    """The front points' numbers and their intervals (``racing.bounds_of``), as racing compares with them."""
    return [(t.number, _bounds(t, objectives)) for t in front_trials(study)]


def trials_frame(study: optuna.Study, objectives: tuple[Objective, ...],
                 records: Callable[[optuna.trial.FrozenTrial], list[RequestRecord]] | None = None, *,
                 alpha: float = ERROR_RATE, seed: int = 0) -> pd.DataFrame:
    """One row per measured setting (its latest trial): number, settings, every metric, where its time went
    (``bottleneck``: pipeline.measure.bottleneck's kind), feasibility (and why not:
    the context does not fit, or the trial was stopped early), why racing stopped it, the trial it topped up,
    front membership, the front points it is tied with and how that was judged (``ties``: ``racing.tied_points``,
    paired on the requests two points share when ``records`` reads them, at error rate ``alpha``)."""
    front = front_trials(study)
    ties = tied_points({t.number: _bounds(t, objectives) for t in front},
                       {t.number: _records(records, t) for t in front}, objectives, alpha, seed=seed)
    tied = ties.of
    drifted = study.user_attrs.get(DRIFT, {})
    rows = []
    for trial in measured_trials(study):
        row = {"number": trial.number, "pareto": trial.number in tied,
               "tied_with": ", ".join(str(n) for n in tied.get(trial.number, [])),
               "ties": ties.how if trial.number in tied else "",
               "feasible": feasible(trial.constraints.values()),
               "infeasible_reason": trial.user_attrs.get(INFEASIBLE, ""),
               ABORTED: trial.user_attrs.get(ABORTED, ""),
               RACED: trial.user_attrs.get(RACED, ""),
               DRIFT: drifted.get(str(trial.number), ""),
               REFERENCE: trial.user_attrs.get(REFERENCE),
               TOPS_UP: trial.user_attrs.get(TOPS_UP),
               RUN_ID: trial.user_attrs.get(RUN_ID),
               "baseline": bool(trial.user_attrs.get(BASELINE))}
        row.update(trial.params)
        row.update(trial.user_attrs.get(METRICS, {}))
        for objective, value in zip(objectives, trial.values):
            row[objective.metric] = value
        row[BOTTLENECK] = verdict(row, concurrency=int(trial.params.get(CONCURRENCY, 1)),
                                  slots=int(trial.params.get("parallel", 1))).kind
        rows.append(row)
    return pd.DataFrame(rows)


def _records(records: Callable[[optuna.trial.FrozenTrial], list[RequestRecord]] | None,
             trial: optuna.trial.FrozenTrial) -> list[RequestRecord] | None:
    """A trial's request records, or None when they cannot be read (its ties are then judged unpaired)."""
    if records is None:
        return None
    try:
        return records(trial)
    except (KeyError, PipelineError):
        return None


def _bounds(trial: optuna.trial.FrozenTrial, objectives: tuple[Objective, ...]) -> np.ndarray:
    """A trial's intervals (``racing.bounds_of``) from its recorded metrics, or its values without them."""
    return bounds_of(trial.user_attrs.get(METRICS) or _values(trial, objectives), objectives)


def _values(trial: optuna.trial.FrozenTrial, objectives: tuple[Objective, ...]) -> dict[str, float]:
    return {o.metric: v for o, v in zip(objectives, trial.values)}


def front_frame(trials: pd.DataFrame, objectives: tuple[Objective, ...]) -> pd.DataFrame:
    """The front's rows, best first by the first objective."""
    if trials.empty:
        return trials
    first = objectives[0]
    return trials[trials["pareto"]].sort_values(first.metric, ascending=first.direction == "minimize")


SETTINGS = (*CORE_PARAMETERS, *OPTIONAL_PARAMETERS)
