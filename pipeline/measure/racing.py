"""Decisions on noisy measurements: a trial's intervals at an error rate, ties, and racing.

A trial measured on a sample of requests knows each objective only within an interval. At the error rate
``alpha`` each objective gets a two-sided ``1 - alpha`` interval over the trial's requests:

Wilson's score interval for a rate, the bootstrap for a share or a latency statistic, none for other metrics
(:func:`pipeline.measure.intervals.interval`, by the kind the metric registry declares).

From the intervals, in minimisation form (a maximised metric negated): a point's **optimistic corner** is the best
end of each interval, its **pessimistic corner** the worst end. A point is *dominated at the error rate* when
another's pessimistic corner dominates its optimistic corner (no worse on every objective, better on one).
Two points are *tied* when the measurements cannot tell them apart on any objective. Where the two answered the
same requests (every trial of a study takes them in the same order), that is judged **paired**: the interval of
their difference, request by request, holds 0 on every objective (:func:`holds_zero`); only where they share
fewer than two requests, or their records are not at hand, **unpaired**: their own intervals overlap on every
objective (:func:`ties`). :func:`tied_points` applies that one rule to a set of points and says which it used.
A pair is *decided* on an objective when their intervals on it do not overlap; topping up spends requests on the
pairs that are not (:func:`undecided`).

Racing (:class:`Racer`) decides on fewer requests than that: every trial of a study takes the same requests in
the same order, so after ``n`` of its requests a trial is compared with each front point *on those same n
requests*, request by request (:func:`paired_gaps`: the bootstrap resamples the requests, both points
together, :func:`pipeline.measure.intervals.paired_gaps`). What makes a request hard or slow for every setting
cancels out.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from pipeline.measure.intervals import interval, paired_gaps
from pipeline.measure.records import RequestRecord
from pipeline.measure.registry import Objective

__all__ = ["BOUND_SUFFIXES", "Race", "Racer", "Ties", "bound_metrics", "bounds_of", "corner", "dominated_by",
           "dominates", "dominated_on_the_same_requests", "holds_zero", "interval", "paired_gaps", "still_dominated",
           "tied_points", "ties", "undecided"]

# A trial's interval on each objective is recorded beside its metrics as <metric>_bound_low / <metric>_bound_high.
BOUND_SUFFIXES = ("_bound_low", "_bound_high")

def bound_metrics(records: Sequence[RequestRecord], objectives: Sequence[Objective], alpha: float, *,
                  seed: int = 0) -> dict[str, float]:
    """Each objective's interval as the metrics ``<metric>_bound_low`` and ``<metric>_bound_high``."""
    out: dict[str, float] = {}
    for objective in objectives:
        low, high = interval(records, objective.metric, alpha, seed=seed)
        out[objective.metric + BOUND_SUFFIXES[0]], out[objective.metric + BOUND_SUFFIXES[1]] = low, high
    return out


def bounds_of(metrics: dict[str, float], objectives: Sequence[Objective]) -> np.ndarray:
    """A trial's intervals from its recorded metrics: rows (low, high), one column per objective. A trial
    recorded without them (measured before racing existed) has its value as both ends when the metric has no
    95% interval either, else that interval."""
    rows = []
    for objective in objectives:
        low, high = (metrics.get(objective.metric + s) for s in BOUND_SUFFIXES)
        if low is None or high is None:
            low = metrics.get(f"{objective.metric}_ci95_low", metrics[objective.metric])
            high = metrics.get(f"{objective.metric}_ci95_high", metrics[objective.metric])
        rows.append((low, high))
    return np.array(rows, float).T.reshape(2, len(objectives))


def corner(bounds: np.ndarray, objectives: Sequence[Objective], *, optimistic: bool) -> np.ndarray:
    """The best (``optimistic``) or worst end of each interval, in minimisation form."""
    low, high = bounds
    out = []
    for i, objective in enumerate(objectives):
        best, worst = (high[i], low[i]) if objective.sign > 0 else (low[i], high[i])
        out.append(-objective.sign * (best if optimistic else worst))
    return np.nan_to_num(np.array(out, float), nan=math.inf if not optimistic else -math.inf)


def dominates(a: np.ndarray, b: np.ndarray) -> bool:
    """Pareto dominance of minimisation points: ``a`` no worse than ``b`` anywhere and better somewhere."""
    return bool(np.all(a <= b) and np.any(a < b))


def dominated_by(bounds: np.ndarray, front: Sequence[tuple[int, np.ndarray]],
                 objectives: Sequence[Objective]) -> int | None:
    """The first front point (number, intervals) whose pessimistic corner dominates the optimistic corner of
    ``bounds``: the point is dominated at the error rate the intervals were taken at. None when no point does."""
    best = corner(bounds, objectives, optimistic=True)
    return next((number for number, theirs in front
                 if dominates(corner(theirs, objectives, optimistic=False), best)), None)


@dataclass(frozen=True)
class Race:
    """Why a trial stopped: after ``requests`` of ``planned``, trial ``by`` dominated it at error rate ``alpha``."""

    by: int
    requests: int
    planned: int
    alpha: float
    detail: str

    def describe(self) -> str:
        return (f"stopped after {self.requests} of {self.planned} requests: trial {self.by} dominates it at error "
                f"rate {self.alpha:g} (its {self.detail})")


def dominated_on_the_same_requests(gaps: list[tuple[float, float, float]] | None) -> bool:
    """Whether the gaps (:func:`paired_gaps`) say the other point dominates at the error rate: better on one
    objective (the whole interval above 0) and no worse on any (above 0, or identical on every resample)."""
    if not gaps:
        return False
    same = [low == high == 0 for _, low, high in gaps]
    better = [low > 0 for _, low, _ in gaps]
    return all(s or b for s, b in zip(same, better)) and any(better)


class Racer:
    """The racing rule of one trial: after each stage (a number of its requests below ``planned``), stop when a
    front point dominates it at the error rate on the same requests (:func:`paired_gaps`).

    Every trial of a study takes the same requests in the same order, so a trial's first ``n`` requests are
    requests every front point answered too. Compared request by request, what makes a request hard or slow
    for every setting cancels out, and a few requests decide what independent intervals cannot.

    Args:
        front: the completed front points: trial number and their request records.
    """

    def __init__(self, front: Sequence[tuple[int, Sequence[RequestRecord]]], objectives: Sequence[Objective],
                 alpha: float, stages: Sequence[int], *, seed: int = 0) -> None:
        self.front = list(front)
        self.objectives, self.alpha, self.stages, self.seed = tuple(objectives), alpha, set(stages), seed

    def check(self, records: Sequence[RequestRecord], planned: int) -> Race | None:
        if len(records) not in self.stages or len(records) >= planned:
            return None
        for number, theirs in self.front:
            gaps = paired_gaps(records, theirs, self.objectives, self.alpha, seed=self.seed)
            if dominated_on_the_same_requests(gaps):
                return Race(number, len(records), planned, self.alpha, self._detail(gaps))
        return None

    def _detail(self, gaps: list[tuple[float, float, float]]) -> str:
        return "; ".join(f"{o.metric} {'higher' if o.direction == 'maximize' else 'lower'} by {estimate:.3g} "
                         f"[{low:.3g}, {high:.3g}] on the same requests"
                         for o, (estimate, low, high) in zip(self.objectives, gaps))


def still_dominated(ours: Sequence[RequestRecord], front: Sequence[tuple[int, Sequence[RequestRecord]]],
                    objectives: Sequence[Objective], alpha: float, *, seed: int = 0) -> int | None:
    """The first front point that dominates ``ours`` at the error rate on the same requests, or None."""
    return next((number for number, theirs in front
                 if dominated_on_the_same_requests(paired_gaps(ours, theirs, objectives, alpha, seed=seed))), None)


def _overlap(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Per objective, whether two (low, high) interval rows overlap."""
    return (a[0] <= b[1]) & (b[0] <= a[1])


def ties(points: dict[int, np.ndarray]) -> dict[int, list[int]]:
    """For each point, the others whose intervals overlap its own on every objective (ties), in number order."""
    return {n: [m for m in sorted(points) if m != n and bool(np.all(_overlap(points[n], points[m])))]
            for n in points}


def holds_zero(gaps: Sequence[tuple[float, float, float]]) -> bool:
    """Whether every difference's interval (``(estimate, low, high)``, :func:`paired_gaps`) holds 0: the paired
    measurements do not tell the two points apart on any of these objectives."""
    return all(low <= 0 <= high for _, low, high in gaps)


@dataclass(frozen=True)
class Ties:
    """For each point, the others it is tied with (in number order), and how many pairs were judged paired (on
    their shared requests) and how many unpaired (each point's own intervals)."""

    of: dict[int, list[int]]
    paired: int
    unpaired: int

    @property
    def how(self) -> str:
        """How the ties were judged, in words, for a caption or a note."""
        if not self.unpaired:
            return "paired: every difference on their shared requests holds 0"
        if not self.paired:
            return "unpaired: their intervals overlap on every objective"
        return (f"paired on shared requests ({self.paired} pairs; {self.unpaired} without shared requests: "
                "their intervals overlap)")


def tied_points(points: dict[int, np.ndarray], records: dict[int, Sequence[RequestRecord] | None] | None,
                objectives: Sequence[Objective], alpha: float, *, seed: int = 0) -> Ties:
    """The ties among ``points`` (number: intervals, :func:`bounds_of`): a pair whose records (``records``, by
    number) share two requests or more is tied when its paired differences hold 0 on every objective at error
    rate ``alpha`` (:func:`holds_zero`); any other pair when its intervals overlap on every objective."""
    records = records or {}
    of: dict[int, list[int]] = {n: [] for n in points}
    paired = unpaired = 0
    numbers = sorted(points)
    for i, n in enumerate(numbers):
        for m in numbers[i + 1:]:
            mine, theirs = records.get(n), records.get(m)
            gaps = None if mine is None or theirs is None else paired_gaps(mine, theirs, objectives, alpha,
                                                                           seed=seed)
            if gaps is not None:
                paired += 1
                tied = holds_zero(gaps)
            else:
                unpaired += 1
                tied = bool(np.all(_overlap(points[n], points[m])))
            if tied:
                of[n].append(m)
                of[m].append(n)
    return Ties({n: sorted(v) for n, v in of.items()}, paired, unpaired)


def undecided(points: dict[int, np.ndarray]) -> dict[int, int]:
    """For each point, how many (other point, objective) orders its intervals leave open."""
    return {n: sum(int(np.sum(_overlap(points[n], points[m]))) for m in points if m != n) for n in points}
