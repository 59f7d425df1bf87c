"""Drift control: the machine's speed over a study, from a fixed reference setting measured again at intervals.

A machine's speed moves over minutes (other load, clocks, the page cache): measured here, the same setting 25
minutes apart gave p50 249 vs 351 ms with identical answers. Every ``evaluation.drift_every`` trials a study sends
``drift_requests`` requests of a fixed reference setting (the config's baseline, else the study's first trial's
settings) and takes their median latency: the **reference**. It is not a trial and never on the front; the
parent run records it as the metric series ``drift_reference_ms`` (and ``drift_speed``: the first reference over
this one, 1 = as fast as at the start).

Each trial carries the reference measured last before it (user attr and MLflow tag ``reference_ms``). When two
consecutive references differ by more than ``drift_threshold`` (relative), the trials measured between them ran
while the machine changed speed: each is flagged (study user attr ``drift``, MLflow tag ``drift`` on its run) and,
with ``drift_remeasure``, measured again once the check is done. :func:`machine_note` says when two trials'
latencies come from machine states further apart than the threshold.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace

import numpy as np
import optuna
from rich.console import Console

from pipeline.engines.settings import InferenceSettings, settings_of
from pipeline.measure.runner import TrialPlan, run_trial
from pipeline.search.config import StudyConfig
from pipeline.search.fronts import measured_trials
from pipeline.search.prepare import PreparedStudy
from pipeline.search.space import suggest
from pipeline.search.trials import DRIFT, REMEASURES, RUN_ID
from pipeline.tracking.runs import StudyTracker

__all__ = ["DriftMonitor", "machine_note", "reference_setting", "study_monitor"]



@dataclass
class DriftMonitor:
    """Measures the reference every ``every`` trials and flags the trials in between when it moved.

    Args:
        measure: sends the reference requests; returns their median latency (ms).
        record: called with (check index, reference ms, speed) for the parent run's metric series.
        flag: called with (trial numbers, reason) for trials measured while the reference moved.
    """

    measure: Callable[[], float]
    every: int
    threshold: float
    record: Callable[[int, float, float], None]
    flag: Callable[[list[int], str], None]
    references: list[float] = field(default_factory=list)
    _since: list[int] = field(default_factory=list)

    @property
    def last(self) -> float | None:
        return self.references[-1] if self.references else None

    def start(self) -> None:
        """The first reference, before any trial."""
        self._check()

    def trial_done(self, number: int) -> list[int]:
        """Count a measured trial; every ``every`` trials, measure the reference and flag the trials since the last
        check when it moved by more than the threshold. Returns the flagged trial numbers."""
        self._since.append(number)
        if len(self._since) < self.every:
            return []
        return self._check()

    def _check(self) -> list[int]:
        before = self.last
        now = float(self.measure())
        self.references.append(now)
        self.record(len(self.references) - 1, now, self.references[0] / now if now > 0 else float("nan"))
        trials, self._since = self._since, []
        if before is None or not trials or abs(now / before - 1) <= self.threshold:
            return []
        reason = (f"the machine's speed moved while this trial ran: the reference setting's median latency went "
                  f"{before:.0f} -> {now:.0f} ms ({now / before - 1:+.0%}) over trials "
                  f"{trials[0]}-{trials[-1]}; its latencies are not comparable with the others'")
        self.flag(trials, reason)
        return trials


def machine_note(a: tuple[str, float | None], b: tuple[str, float | None], threshold: float) -> str | None:
    """A sentence when two measurements' references differ by more than ``threshold``: their latencies come from
    different machine states. ``a`` and ``b`` are (what, reference ms)."""
    (name_a, ref_a), (name_b, ref_b) = a, b
    if not ref_a or not ref_b or abs(ref_b / ref_a - 1) <= threshold:
        return None
    return (f"{name_a} and {name_b} were measured at different machine speeds (reference setting's median "
            f"{ref_a:.0f} vs {ref_b:.0f} ms, {ref_b / ref_a - 1:+.0%}): their latencies are not directly comparable")


def reference_setting(study: optuna.Study, config: StudyConfig) -> InferenceSettings | None:
    """The setting drift control measures again: the config's baseline, else the study's first measured trial."""
    if config.baseline is not None:
        return settings_of(config.baseline, seed=config.study.seed)
    first = min(measured_trials(study), key=lambda t: t.number, default=None)
    return None if first is None else suggest(optuna.trial.FixedTrial(first.params), config.search_space,
                                              seed=config.study.seed)


def study_monitor(study: optuna.Study, prepared: PreparedStudy, plan: TrialPlan, tracker: StudyTracker,
                  reference: Callable[[], InferenceSettings], console: Console) -> DriftMonitor | None:
    """Drift control as ``evaluation.drift_*`` asks (None when off): the ``reference`` setting (asked for when it
    is first measured) measured through the trial plan without early abort, its series on the parent run,
    flagged trials recorded (and enqueued again)."""
    evaluation = prepared.config.evaluation
    if not evaluation.drift_every:
        return None
    requests = prepared.examples[:evaluation.drift_requests]

    def measure() -> float:
        outcome = run_trial(reference(), requests, replace(plan, abort_on=()))
        done = [r.latency_ms for r in outcome.records if not r.failed]
        return float(np.median(done)) if done else float("nan")

    def record(step: int, ms: float, speed: float) -> None:
        tracker.log_study_series({"drift_reference_ms": ms, "drift_speed": speed}, step=step)

    def flag(numbers: list[int], reason: str) -> None:
        flagged = {**study.user_attrs.get(DRIFT, {}), **{str(n): reason for n in numbers}}
        study.set_user_attr(DRIFT, flagged)
        trials = {t.number: t for t in study.get_trials(deepcopy=False)}
        for number in numbers:
            run_id = trials[number].user_attrs.get(RUN_ID)
            if run_id:
                tracker.tag_run(run_id, {DRIFT: reason})
            if evaluation.drift_remeasure and REMEASURES not in trials[number].user_attrs:
                study.enqueue_trial(trials[number].params, user_attrs={REMEASURES: number})
        console.print(f"trials {', '.join(map(str, numbers))}: {reason}"
                      + ("; measuring them again" if evaluation.drift_remeasure else ""), highlight=False)

    return DriftMonitor(measure, evaluation.drift_every, evaluation.drift_threshold, record, flag)
