"""A finished study as promotion reads it: a read-only snapshot of its trials, measured trials and front.

The rooms above search do not import optuna: :func:`open_for_promotion` loads a study from its storage, checks
that the config given is the one the study ran with, and hands back a :class:`StudySnapshot` of plain data
(:class:`~pipeline.search.trials.TrialView`). Which trials are measured and which are on the front is decided by
:mod:`pipeline.search.fronts`, once, when the snapshot is taken.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import optuna

from pipeline.errors import InputError
from pipeline.measure.records import RequestRecord
from pipeline.search.fronts import front_trials, measured_trials
from pipeline.search.prepare import PreparedStudy, check_definition, definition_of
from pipeline.search.storage import open_storage
from pipeline.search.topup import TrialRecords
from pipeline.search.trials import DEFINITION, PARENT_RUN, TrialView
from pipeline.tracking.runs import run_table_reader

__all__ = ["PROMOTION_KEYS", "StudySnapshot", "open_for_promotion"]

# What must match between the config given to promote and the study's: a point is replayed on the job, model
# and space it was measured on; the rest (split, limit, sampler, constraints) may differ.
PROMOTION_KEYS = ("objectives", "search_space", "experiment", "dataset_digest", "backend", "model", "model_digest")


@dataclass(frozen=True)
class StudySnapshot:
    """A study's trials at one moment, and what promotion reads of its own record.

    ``trials`` holds every trial; ``measured`` the completed trials that measured their settings, each setting by
    its latest measurement (:func:`~pipeline.search.fronts.measured_trials`); ``front`` their Pareto front
    (:func:`~pipeline.search.fronts.front_trials`). ``definition`` is what the study was run with
    (:func:`~pipeline.search.prepare.definition_of`), ``parent_run_id`` its MLflow parent run.
    """

    name: str
    trials: tuple[TrialView, ...] = ()
    measured: tuple[TrialView, ...] = ()
    front: tuple[TrialView, ...] = ()
    definition: dict[str, Any] = field(default_factory=dict)
    parent_run_id: str | None = None
    # a trial's request records by its number, when the reader of the snapshot can have them (paired evidence)
    read_records: Callable[[int], list[RequestRecord]] | None = field(default=None, compare=False, repr=False)

    @classmethod
    def of(cls, study: optuna.Study,
           records: Callable[[optuna.trial.FrozenTrial], list[RequestRecord]] | None = None) -> StudySnapshot:
        """The snapshot of a study as its storage holds it now; ``records`` reads a trial's request records
        (``pipeline.search.topup.TrialRecords.get``), for choices made on paired evidence.

        Returns:
            A snapshot that later trials of the study do not change.
        """
        frozen = {t.number: t for t in study.trials}
        return cls(name=study.study_name, trials=tuple(TrialView.of(t) for t in study.trials),
                   measured=tuple(TrialView.of(t) for t in measured_trials(study)),
                   front=tuple(TrialView.of(t) for t in front_trials(study)),
                   definition=dict(study.user_attrs.get(DEFINITION, {})),
                   parent_run_id=study.user_attrs.get(PARENT_RUN),
                   read_records=None if records is None else (lambda number: records(frozen[number])))

    def records(self, trial: TrialView) -> list[RequestRecord] | None:
        """The request records a trial was measured on, or None when this snapshot cannot read them (none given,
        or a trial with no records of its own: one answered by an earlier measurement of its settings)."""
        if self.read_records is None:
            return None
        try:
            return self.read_records(trial.number)
        except KeyError:
            return None

    @property
    def seed(self) -> int:
        """The study's own seed (a replay must be the trial as it ran, whatever seed the config now gives).

        Raises:
            KeyError: the study records no definition (no study of this package).
        """
        return int(self.definition["seed"])

    @property
    def baseline(self) -> TrialView | None:
        """The measured trial of the config's baseline (the settings served today), or None."""
        return next((t for t in self.measured if t.baseline), None)

    def trial(self, number: int | None) -> TrialView | None:
        """The trial of that number, or None."""
        return next((t for t in self.trials if t.number == number), None)


def open_for_promotion(prepared: PreparedStudy, study_name: str) -> StudySnapshot:
    """Load ``study_name`` from the prepared storage and check it was run with this config (:data:`PROMOTION_KEYS`).

    Returns:
        The study's snapshot; it reads a trial's request records from its MLflow run when a policy asks.
    Raises:
        InputError: there is no such study in the storage.
        ConfigError: the config, backend or model differs from the study's.
    """
    try:
        study = optuna.load_study(study_name=study_name, storage=open_storage(prepared.storage_url))
    except KeyError as exc:
        raise InputError(f"no study {study_name!r} in {prepared.storage_url}; run `pipeline study` first") from exc
    check_definition(study, definition_of(prepared), PROMOTION_KEYS,
                     fix="pass the config (and backend/model) the study used")
    records = TrialRecords(run_table_reader(prepared.tracking_uri, "requests.json"), list(prepared.experiment.requests),
                           prepared.experiment.scorer)
    return StudySnapshot.of(study, records.get)
