"""Topping up: more requests for a setting already measured, added to the ones it has.

A top-up measures the next requests of the split that the setting has not seen (in ``Experiment.ordered``'s
order, so a trial of ``n`` requests grows exactly as a trial of a larger ``limit`` would have begun) and a new
trial holds the earlier trial's records and these: its user attr ``tops_up`` names the earlier trial, which is
superseded (``fronts.superseded``) but kept. Two things ask for one:

- a trial that racing stopped is proposed again by the sampler while no front point dominates it any more at
  the error rate (:func:`resumable`): it is measured up to the full size instead of answered from its few
  requests;
- refinement at the end of a study (``evaluation.refine_requests``, ``pipeline study --refine N``): the front and
  the points whose intervals reach it get more requests, the least measured first, until every order among them
  is decided on every objective, the split is used up, or the budget is spent (:func:`next_top_up`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import optuna
import pandas as pd

from pipeline.job.experiment import Example
from pipeline.job.scoring import Scorer
from pipeline.measure.racing import bounds_of, dominated_by, still_dominated, undecided
from pipeline.measure.records import RequestRecord
from pipeline.measure.registry import Objective, feasible
from pipeline.measure.runner import TrialOutcome
from pipeline.measure.tables import records_from_rows
from pipeline.search.fronts import front_bounds, front_trials, measured_trials
from pipeline.search.trials import METRICS, RACED, REMEASURES, RUN_ID, TOPS_UP

__all__ = ["TOP_UP_REQUESTS", "TopUp", "TrialRecords", "combined", "next_requests", "next_top_up", "resumable",
           "top_up_source"]

# User attr of a trial enqueued to top up another: how many requests to add.
TOP_UP_REQUESTS = "top_up_requests"


class TrialRecords:
    """The request records of measured trials: kept from this run, else read back from the trial's
    ``requests.json`` in MLflow (``read(run_id)``) and scored again."""

    def __init__(self, read: Callable[[str], pd.DataFrame], examples: list[Example], scorer: Scorer) -> None:
        self._read, self._scorer = read, scorer
        self._examples = {e.id: e for e in examples}
        self._kept: dict[int, list[RequestRecord]] = {}

    def keep(self, number: int, records: list[RequestRecord]) -> None:
        self._kept[number] = list(records)

    def get(self, trial: optuna.trial.FrozenTrial) -> list[RequestRecord]:
        if trial.number not in self._kept:
            self._kept[trial.number] = records_from_rows(self._read(trial.user_attrs[RUN_ID]),
                                                         self._examples, self._scorer)
        return self._kept[trial.number]


def next_requests(ordered: list[Example], records: list[RequestRecord], count: int) -> list[Example]:
    """The first ``count`` examples of ``ordered`` that ``records`` do not hold."""
    seen = {r.request_id for r in records}
    return [e for e in ordered if e.id not in seen][:count]


def combined(before: list[RequestRecord], before_metrics: dict[str, float], added: TrialOutcome) -> TrialOutcome:
    """One outcome of an earlier trial's records and a top-up's: the top-up's loads and serving tags, and as
    the span, the earlier one (its requests over its throughput) plus the top-up's."""
    span = added.span_s
    if span is not None and before_metrics.get("throughput_rps"):
        span += len([r for r in before if not r.failed]) / before_metrics["throughput_rps"]
    return TrialOutcome(records=[*before, *added.records], model_loads=added.model_loads,
                        model_load_ms=added.model_load_ms, warmup_requests=added.warmup_requests, span_s=span,
                        tags=added.tags)


def top_up_source(study: optuna.Study, trial: optuna.Trial) -> optuna.trial.FrozenTrial | None:
    """The trial that ``trial`` tops up: the one its user attr names (refinement), or the measurement of its
    settings that racing stopped (a resumed trial: the sampler proposed them again); None for a new setting."""
    if REMEASURES in trial.user_attrs:
        return None
    number = trial.user_attrs.get(TOPS_UP)
    if number is not None:
        return next(t for t in study.get_trials(deepcopy=False) if t.number == number)
    earlier = next((t for t in measured_trials(study) if t.params == trial.params and t.number != trial.number),
                   None)
    return earlier if earlier is not None and RACED in earlier.user_attrs else None


def resumable(study: optuna.Study, earlier: optuna.trial.FrozenTrial, objectives: tuple[Objective, ...],
              records: Callable[[optuna.trial.FrozenTrial], list[RequestRecord]], alpha: float, *,
              seed: int = 0) -> bool:
    """Whether a trial racing stopped should be measured up to its full size when proposed again: no point of
    the current front dominates it at the error rate on the same requests any more (``racing.still_dominated``)."""
    if RACED not in earlier.user_attrs:
        return False
    front = [(t.number, records(t)) for t in front_trials(study) if t.number != earlier.number]
    return still_dominated(records(earlier), front, objectives, alpha, seed=seed) is None


@dataclass(frozen=True)
class TopUp:
    trial: optuna.trial.FrozenTrial
    requests: int


def next_top_up(study: optuna.Study, objectives: tuple[Objective, ...], *, budget: int,
                most: int) -> TopUp | None:
    """The next top-up of a refinement, or None when there is nothing left to decide or no budget.

    Candidates: the front and every feasible measured point that no front point dominates at the error rate
    (their intervals reach the front). Among those whose order with another candidate is open on some objective
    and that have fewer than ``most`` requests (the split), the least measured is topped up: doubled, within the
    budget and the split.
    """
    if budget <= 0:
        return None
    front = front_bounds(study, objectives)
    if not front:
        return None
    met = [t for t in measured_trials(study) if feasible(t.constraints.values())]
    bounds = {t.number: bounds_of(t.user_attrs[METRICS], objectives) for t in met}
    on_front = {n for n, _ in front}
    candidates = {n: b for n, b in bounds.items() if n in on_front or dominated_by(b, front, objectives) is None}
    open_orders = undecided(candidates)

    def measured(t: optuna.trial.FrozenTrial) -> int:
        return int(t.user_attrs[METRICS].get("requests_measured", 0))

    eligible = [t for t in met if t.number in candidates and open_orders[t.number] and measured(t) < most]
    if not eligible:
        return None
    pick = min(eligible, key=lambda t: (measured(t), -open_orders[t.number], t.number))
    return TopUp(pick, min(max(measured(pick), 1), budget, most - measured(pick)))
