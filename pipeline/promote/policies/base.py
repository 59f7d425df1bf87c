"""What every promotion policy shares: the choice it returns, the options it reads, the roles it needs, and the
comparison of two points (paired on their shared requests where the snapshot has them, else their intervals).

A policy is an object with a ``name``, a ``sentence`` a user can check, the metric roles it ``needs``
(``pipeline.measure.registry.Role``: "accuracy", "latency") and ``choose(study, objectives, options)``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, Protocol

import numpy as np

from pipeline.errors import ConfigError, InputError
from pipeline.measure.intervals import ERROR_RATE, paired_gaps, signed_difference
from pipeline.measure.racing import bounds_of, tied_points
from pipeline.measure.registry import Objective, Role, with_role
from pipeline.search.compare import to_minimization
from pipeline.search.snapshot import StudySnapshot
from pipeline.search.trials import TrialView

__all__ = ["ERROR_RATE", "BasePolicy", "Choice", "Difference", "Options", "Policy", "Preference", "beating_baseline",
           "candidates", "difference", "knee_index", "preferred_tie", "require_front", "role_objective"]

# What breaks a tie the measurements could not: the policy's own pick stands (``policy``), the most accurate of
# the tied points, or the fastest.
Preference = Literal["policy", "accuracy", "latency"]


class Options(Protocol):
    """What a policy reads of promote's options (``pipeline.promote.promotion.PromotionPolicy`` has it)."""

    policy: str
    sla_p95_ms: float | None
    trial: int | None
    prefer: Preference
    margin: float


@dataclass(frozen=True)
class Choice:
    trial: TrialView
    why: str = ""                      # how the choice was made among others, in words


class Policy(Protocol):
    name: str
    sentence: str                      # what it promotes, in one sentence a user can check
    needs: tuple[Role, ...]            # the objectives' roles it reads

    def choose(self, study: StudySnapshot, objectives: tuple[Objective, ...], options: Options, *,
               alpha: float = ERROR_RATE) -> Choice: ...

    def decides_on(self, objectives: tuple[Objective, ...]) -> tuple[Objective, ...]:
        """The objectives on which the finals must tell the choice from a rival (:mod:`pipeline.search.finals`)."""
        ...

    def check(self, options: Options) -> None:
        """Raise ConfigError (one line) when ``options`` lack what the policy needs; checked before anything is
        loaded, and again by ``choose``."""
        ...


class BasePolicy:
    """What a policy does unless it says otherwise: its finals decide a pair on any objective (the knee's
    trade-off, an SLA), and it needs no option."""

    def decides_on(self, objectives: tuple[Objective, ...]) -> tuple[Objective, ...]:
        return objectives

    def check(self, options: Options) -> None:
        return None


def role_objective(objectives: Sequence[Objective], role: Role, policy: str) -> Objective:
    """The study's objective that plays ``role`` for ``policy``.

    Raises:
        ConfigError: no objective does (one line: the policy, the role, the objectives, the fix).
    """
    objective = with_role(objectives, role)
    if objective is None:
        kinds = {"accuracy": "an accuracy (field_accuracy, exact_match_rate, label_accuracy, schema_valid_rate, ...) "
                             "maximised", "latency": "a latency (latency_p95_ms, ttft_p50_ms, ...) minimised"}
        raise ConfigError(f"--policy {policy} needs {kinds[role]} among the study's objectives "
                          f"({', '.join(o.metric for o in objectives)}); use --policy knee or trial, or a study "
                          f"with such an objective")
    return objective


def require_front(study: StudySnapshot) -> list[TrialView]:
    """The study's front.

    Raises:
        InputError: the study has no front (one line: run more trials).
    """
    if not study.front:
        raise InputError(f"study {study.name!r} has no feasible trials on its front; run more trials")
    return list(study.front)


def candidates(study: StudySnapshot) -> list[TrialView]:
    """The front points a policy chooses among: the front without the baseline (the settings served today are
    what a promotion replaces), or the baseline alone when it is the whole front.

    Raises:
        InputError: the study has no front.
    """
    front = require_front(study)
    return [t for t in front if not t.baseline] or front


@dataclass(frozen=True)
class Difference:
    """``a`` minus ``b`` on one metric (in its units) with its interval, and how it was measured: ``paired``
    over ``shared`` requests both answered, or from each point's own interval (``paired`` False)."""

    estimate: float
    low: float
    high: float
    paired: bool
    shared: int = 0

    def text(self) -> str:
        """``+0.12 [+0.05, +0.19]``; whole units when a figure reaches 100 (``-192 [-319, -74]``)."""
        whole = max(abs(self.estimate), abs(self.low), abs(self.high)) >= 100
        estimate, low, high = ((f"{v:+.0f}" if whole else f"{v:+.2f}") for v in (self.estimate, self.low, self.high))
        return f"{estimate} [{low}, {high}]"

    @property
    def how(self) -> str:
        return f"paired on {self.shared} shared requests" if self.paired else "unpaired: each point's own interval"


def difference(study: StudySnapshot, a: TrialView, b: TrialView, objective: Objective, *,
               alpha: float = ERROR_RATE) -> Difference:
    """``a`` minus ``b`` on ``objective``'s metric: paired request by request on the requests both answered when
    the snapshot reads records (:func:`pipeline.measure.intervals.paired_gaps`, at error rate ``alpha``), else the
    widest difference their own intervals allow (low: a's low − b's high; high: a's high − b's low)."""
    if a.number == b.number:
        return Difference(0.0, 0.0, 0.0, True, 0)
    mine, theirs = study.records(a), study.records(b)
    if mine is not None and theirs is not None:
        gaps = paired_gaps(mine, theirs, [objective], alpha)
        if gaps is not None:
            estimate, low, high = signed_difference(objective, gaps[0])
            shared = len({r.request_id for r in mine} & {r.request_id for r in theirs})
            return Difference(estimate, low, high, True, shared)
    (a_low, a_high), (b_low, b_high) = (bounds_of(t.metrics, [objective])[:, 0] for t in (a, b))
    metric = objective.metric
    return Difference(a.metrics[metric] - b.metrics[metric], a_low - b_high, a_high - b_low, False)


def knee_index(points: np.ndarray, span: np.ndarray | None = None) -> int:
    """The knee of a front of minimisation points: the point nearest the ideal once each objective is scaled
    to [0, 1] over ``span`` (the points every measured feasible setting reached; default: the front itself),
    ties: the first.

    Scaled over the front alone, a front of two points puts both at the same distance whatever they are, and a
    p95 30 ms apart counts as much as field accuracy 0.3 apart; over every feasible setting a difference counts
    by how much of what the study saw it spans.

    Returns:
        The index of the knee in ``points``.
    """
    reach = points if span is None else np.vstack([points, span])
    low, high = reach.min(axis=0), reach.max(axis=0)
    scaled = (points - low) / np.where(high > low, high - low, 1.0)
    return int(np.argmin(np.linalg.norm(scaled, axis=1)))


def beating_baseline(study: StudySnapshot, front: Sequence[TrialView],
                     objectives: tuple[Objective, ...]) -> tuple[list[TrialView], str]:
    """The front points that dominate the study's baseline trial on dev (no worse on every objective, better on
    one), and a sentence saying so.

    Returns:
        The points and the sentence; the whole front and "" when the study has no baseline; the front without
        the baseline, and a sentence saying so, when no point beats it.
    """
    served = study.baseline
    if served is None or not front:
        return list(front), ""
    base = to_minimization(np.array([served.values], dtype=float), objectives)[0]
    points = to_minimization(np.array([t.values for t in front], dtype=float), objectives)
    better = [t for t, p in zip(front, points) if (p <= base).all() and (p < base).any()]
    if not better:  # the baseline itself is no candidate (it may be on the front): it is what is served
        others = [t for t in front if t.number != served.number] or list(front)
        return others, (f"no front point beats the baseline (trial {served.number}) on every objective on dev: "
                        "chosen from the whole front")
    return better, (f"chosen among the {len(better)} of {len(front)} front points that beat the baseline "
                    f"(trial {served.number}) on every objective on dev")


def preferred_tie(study: StudySnapshot, chosen: TrialView, pool: list[TrialView], objectives: tuple[Objective, ...],
                  why: str, prefer: Preference, *, alpha: float = ERROR_RATE) -> Choice:
    """``chosen``, or among the points of ``pool`` tied with it (``racing.tied_points``: paired on the requests
    two points share where the snapshot reads records, the same rule as the finals and the front table) the one
    the policy prefers — the best on the accuracy objective (``accuracy``) or on the latency objective
    (``latency``) — saying so and how the tie was judged."""
    ties = tied_points({t.number: bounds_of(t.metrics, objectives) for t in pool},
                       {t.number: study.records(t) for t in pool}, objectives, alpha)
    tied = ties.of[chosen.number]
    if not tied:
        return Choice(chosen, why)
    said = (f"trial {chosen.number} is tied with trial{'s' if len(tied) > 1 else ''} "
            f"{', '.join(str(n) for n in tied)} ({ties.how})")
    if prefer == "policy":
        note = f"{said}: kept the policy's own pick (--prefer accuracy or latency would break the tie)"
        return Choice(chosen, f"{why}; {note}" if why else note)
    group = [chosen, *(t for t in pool if t.number in tied)]
    quality, speed = with_role(objectives, "accuracy"), with_role(objectives, "latency")
    latency = speed.metric if speed is not None else "latency_p95_ms"
    if prefer == "accuracy" and quality is not None:
        pick = max(group, key=lambda t: (t.metrics[quality.metric], -t.metrics[latency], -t.number))
        reason = f"the highest {quality.metric} ({pick.metrics[quality.metric]:.3g}; --prefer latency: the fastest)"
    else:
        pick = min(group, key=lambda t: (t.metrics[latency], t.number))
        reason = f"the lowest {latency} ({pick.metrics[latency]:.0f}; --prefer accuracy: the most accurate)"
    note = f"{said}: chose trial {pick.number}, {reason}"
    return Choice(pick, f"{why}; {note}" if why else note)
