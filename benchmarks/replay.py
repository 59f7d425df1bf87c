"""Replay studies against the measured grid: a trial looks its setting's requests up instead of running the model.

The trial's outcome goes through the same code as a real trial's: the early-abort rule
(``runner.abort_reason``) request by request, then ``objectives.trial_values`` for its metrics, constraints and
objective values, so a replayed study sees exactly what a real one on this machine would have seen. Every answer
is scored with the experiment's current rules when the grid is read (``common.rows_to_records``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import optuna
import pandas as pd

from benchmarks.common import read_grid, rows_to_records, searched
from pipeline.measure.metrics import summarize
from pipeline.measure.records import RequestRecord
from pipeline.measure.runner import TrialOutcome, abort_reason
from pipeline.search.compare import normalized_hypervolume, to_minimization
from pipeline.search.config import StudyConfig
from pipeline.search.fronts import is_pareto_front
from pipeline.search.objectives import trial_values
from pipeline.search.prepare import study_experiment
from pipeline.search.reuse import REUSE_LIMIT, reuse_measurement
from pipeline.search.space import suggest


class Table:
    """The grid's request records, by setting, scored with the rules of the config's experiment."""

    def __init__(self, config: StudyConfig, rows: pd.DataFrame | None = None) -> None:
        rows = read_grid() if rows is None else rows
        experiment = study_experiment(config)
        self.config = config
        self.names = searched(config)
        self.records: dict[tuple, list[RequestRecord]] = {
            key: rows_to_records(group, experiment) for key, group in rows.groupby(self.names, sort=False)}

    def key(self, params: dict) -> tuple:
        return tuple(params[name] for name in self.names)

    def outcome(self, params: dict, *, early_abort: bool) -> TrialOutcome:
        records = self.records[self.key(params)]
        abort_on = self.config.constraints if early_abort else ()
        outcome = TrialOutcome()
        for record in records:  # as runner.run_trial, with the engine call replaced by the lookup
            outcome.records.append(record)
            outcome.aborted = abort_reason(outcome.records, len(records), abort_on)
            if outcome.aborted:
                break
        return outcome

    def truth(self) -> pd.DataFrame:
        """Every setting's full metrics and feasibility."""
        rows = []
        for key, records in self.records.items():
            metrics = summarize(records)
            feasible = all(c.violation(metrics[c.metric]) <= 0 for c in self.config.constraints)
            rows.append({**dict(zip(self.names, key)), **metrics, "feasible": feasible})
        return pd.DataFrame(rows)


@dataclass
class Replay:
    """One replayed study: per trial, its setting, its values, feasibility, and requests spent."""

    trials: pd.DataFrame


def replay(table: Table, sampler: optuna.samplers.BaseSampler, trials: int, *, early_abort: bool,
           reuse: bool = True) -> Replay:
    """A study of ``trials`` measured settings; ``reuse``: a repeated setting is answered from its earlier
    measurement, as in a real study (``reuse.reuse_measurement``), else measured again."""
    config = table.config
    study = optuna.create_study(directions=[o.direction for o in config.objectives], sampler=sampler)
    rows = []
    reused = 0
    while len(rows) < trials and reused < REUSE_LIMIT:
        trial = study.ask()
        settings = suggest(trial, config.search_space, seed=config.study.seed)
        key = table.key(settings.as_params())
        if reuse and reuse_measurement(study, trial):
            reused += 1
            continue
        reused = 0
        outcome = table.outcome(settings.as_params(), early_abort=early_abort)
        values = trial_values(trial, outcome, config)
        study.tell(trial, values)
        rows.append({"key": key, "values": values,
                     "feasible": all(v <= 0 for v in trial.constraints.values()),
                     "requests": len(outcome.records), "aborted": outcome.aborted is not None})
    return Replay(pd.DataFrame(rows))


class Scale:
    """Normalised hypervolume on the reference of the true front (as ``pipeline compare`` does)."""

    def __init__(self, table: Table) -> None:
        objectives = table.config.objectives
        truth = table.truth()
        self.objectives = objectives
        self.truth = truth
        feasible = truth[truth["feasible"]]
        points = to_minimization(feasible[[o.metric for o in objectives]].to_numpy(float), objectives)
        self.ideal, nadir = points.min(axis=0), points.max(axis=0)
        spread = np.where(nadir > self.ideal, nadir - self.ideal, 1.0)
        self.reference = nadir + 0.1 * spread
        self.true_hypervolume = self.hypervolume(points)
        self.true_front = [tuple(row[n] for n in table.names)
                           for (_, row), kept in zip(feasible.iterrows(), on_front(points)) if kept]

    def hypervolume(self, points: np.ndarray) -> float:
        return normalized_hypervolume(points, self.ideal, self.reference)

    def share(self, found: Replay, budget: int) -> float:
        """Hypervolume of the feasible trials among the first ``budget`` as a share of the true front's."""
        first = found.trials.iloc[:budget]
        feasible = first[first["feasible"]]
        if feasible.empty:
            return 0.0
        points = to_minimization(np.array(list(feasible["values"]), dtype=float), self.objectives)
        return self.hypervolume(points) / self.true_hypervolume


def on_front(points: np.ndarray) -> np.ndarray:
    """Which minimisation points no other point dominates (Optuna's own rule, as ``Study.best_trials``)."""
    return is_pareto_front(points)


def found_front(trials: pd.DataFrame, objectives: tuple) -> set[tuple]:
    """The settings on the front of a replay's feasible trials."""
    feasible = trials[trials["feasible"]].drop_duplicates("key")
    if feasible.empty:
        return set()
    points = to_minimization(np.array(list(feasible["values"]), dtype=float), objectives)
    return set(feasible["key"][on_front(points)])

