"""What a study keeps on each trial besides Optuna's own record: the names of its user attributes, and
:class:`TrialView`, a typed, read-only view of a finished trial for the rooms above search, which do not import
optuna.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import optuna

from pipeline.measure.registry import feasible

__all__ = ["ABORTED", "BASELINE", "BOTTLENECK", "DEFINITION", "DRIFT", "FAILURE", "INFEASIBLE", "METRICS",
           "PARENT_RUN", "RACED", "REFERENCE", "REMEASURES", "REUSED", "RUN_ID", "TARGET", "TOPS_UP", "RAN_BY",
           "TrialView", "failed_runs"]

# User attr of a trial that was not measured: its settings had been, by the trial it names (see reuse.py).
REUSED = "same_as"
# User attr (and MLflow tag) of the trial that measured the config's baseline: the settings served today.
BASELINE = "baseline"
# User attr (and MLflow tag) of a trial that racing stopped: why (pipeline.measure.racing).
RACED = "raced"
# User attr (and MLflow tag) of a trial that topped up an earlier one: the earlier trial's number. Its records
# are the earlier trial's and more; the earlier trial is superseded (kept in the storage, left out of everything).
TOPS_UP = "tops_up"
# User attr of a trial that measured a setting again from scratch (its first measurement ran while the machine's
# speed moved: pipeline.search.drift): the earlier trial's number, which it supersedes.
REMEASURES = "remeasures"
# User attr of a trial: the id of its MLflow run.
RUN_ID = "mlflow_run_id"
# User attr of a measured trial: its summary, every metric by name (pipeline.measure.metrics.summarize).
METRICS = "metrics"
# User attr (and MLflow tag) of a trial whose settings could not run as set: why (the context does not fit).
INFEASIBLE = "infeasible"
# User attr (and MLflow tag) of a trial that early abort stopped: why (pipeline.measure.runner.Abort).
ABORTED = "aborted"
# MLflow tag of a measured trial, and column of the trials' frame: where its time went (pipeline.measure.bottleneck;
# the tag holds the sentence, the column the kind).
BOTTLENECK = "bottleneck"
# Study user attr: trial number (as text) -> why its latencies are suspect (pipeline.search.drift).
DRIFT = "drift"
# Trial user attr (and MLflow tag): the drift reference's latency (ms) measured last before the trial.
REFERENCE = "reference_ms"
# User attrs of a trial: the worker that ran it (host:pid), why it failed.
RAN_BY = "worker"
FAILURE = "failure"
# Study user attrs: what the study was run with (prepare.definition_of), its MLflow parent run, and how many
# measured trials the current run of it works towards.
DEFINITION = "definition"
PARENT_RUN = "mlflow_parent_run_id"
TARGET = "target"


@dataclass(frozen=True)
class TrialView:
    """One trial of a study as the rooms above search read it: Optuna's record and this package's user attrs.

    ``state`` is the name of Optuna's ``TrialState`` (``"COMPLETE"``, ``"FAIL"``, ``"PRUNED"``, ``"RUNNING"``,
    ``"WAITING"``); ``values`` is None for a trial that did not complete; ``constraints`` maps a constraint's
    name to its violation (> 0: broken). ``metrics`` is the trial's summary (user attr ``metrics``; empty when it
    has none), ``reference`` the drift reference measured last before it (:data:`REFERENCE`).
    """

    number: int
    state: str
    params: dict[str, Any] = field(default_factory=dict)
    values: tuple[float, ...] | None = None
    constraints: dict[str, float] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)
    run_id: str | None = None
    baseline: bool = False
    reference: float | None = None
    raced: str | None = None
    reused_from: int | None = None     # REUSED: the trial whose measurement answered this one
    tops_up: int | None = None
    remeasures: int | None = None

    @classmethod
    def of(cls, trial: optuna.trial.FrozenTrial) -> TrialView:
        """The view of an Optuna trial.

        Returns:
            A view that shares nothing mutable with ``trial`` (its dicts are copies).
        """
        attrs = trial.user_attrs
        return cls(number=trial.number, state=trial.state.name, params=dict(trial.params),
                   values=None if trial.values is None else tuple(trial.values),
                   constraints=dict(trial.constraints), metrics=dict(attrs.get(METRICS) or {}),
                   run_id=attrs.get(RUN_ID), baseline=bool(attrs.get(BASELINE)), reference=attrs.get(REFERENCE),
                   raced=attrs.get(RACED), reused_from=attrs.get(REUSED), tops_up=attrs.get(TOPS_UP),
                   remeasures=attrs.get(REMEASURES))

    @property
    def complete(self) -> bool:
        """Whether the trial finished with values (Optuna's COMPLETE)."""
        return self.state == "COMPLETE"

    @property
    def feasible(self) -> bool:
        """Whether no constraint is broken by Optuna's rule (every violation <= 0, so a NaN one is broken); True for
        a trial without constraints."""
        return feasible(self.constraints.values())


def failed_runs(trials: list[optuna.trial.FrozenTrial]) -> dict[str, str]:
    """The MLflow runs of failed trials (run id: why the trial failed), for ``StudyTracker.close_failed_runs``."""
    return {t.user_attrs[RUN_ID]: t.user_attrs.get(FAILURE, "interrupted: the trial's worker stopped")
            for t in trials if t.user_attrs.get(RUN_ID)}
