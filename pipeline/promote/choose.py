"""Choosing the point of a study's front to promote, from a snapshot of the study (no optuna here).

The ``knee`` policy takes the front point nearest the ideal (:func:`knee_index`), ``sla`` the most accurate one
within a latency limit, ``trial`` a trial named by number. When the study measured the config's baseline, the
first two choose among the front points that beat it (:func:`beating_baseline`). Among the points tied with the
chosen one (their intervals cannot tell them apart, after the finals: :mod:`pipeline.search.finals`) the
policy's stated preference decides (``prefer``: the most accurate, by default, or the fastest), and says so.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, Protocol

import numpy as np

from pipeline.errors import ConfigError, InputError
from pipeline.measure.racing import bounds_of, ties
from pipeline.measure.registry import Objective
from pipeline.search.compare import to_minimization
from pipeline.search.drift import machine_note
from pipeline.search.snapshot import StudySnapshot
from pipeline.search.trials import TrialView

__all__ = ["Choice", "ChoosingPolicy", "Policy", "Preference", "beating_baseline", "choose_trial", "knee_index",
           "machine_states_note"]

Policy = Literal["sla", "knee", "trial"]
# What breaks a tie the measurements could not: the policy's own pick stands (``policy``), the most accurate of
# the tied points, or the fastest.
Preference = Literal["policy", "accuracy", "latency"]


class ChoosingPolicy(Protocol):
    """What :func:`choose_trial` reads of a policy (``pipeline.promote.promotion.PromotionPolicy`` has it)."""

    policy: Policy
    sla_p95_ms: float | None
    trial: int | None
    prefer: Preference


@dataclass(frozen=True)
class Choice:
    trial: TrialView
    why: str = ""                      # how the baseline narrowed the choice, when the study measured one


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


def choose_trial(study: StudySnapshot, objectives: tuple[Objective, ...], policy: ChoosingPolicy) -> Choice:
    """Pick the trial to promote.

    ``sla``: the best on the first maximised objective among front trials with ``latency_p95_ms`` within the
    limit; ``knee``: :func:`knee_index` of the front; ``trial``: that trial, which must be complete and feasible.
    When the study measured a baseline, ``sla`` and ``knee`` choose among the front points that beat it
    (:func:`beating_baseline`) — a promotion is meant to replace it — and from the whole front when none does.

    Returns:
        The trial and why it was chosen among others ("" when nothing narrowed the choice).
    Raises:
        InputError: no trial fits the policy.
        ConfigError: the sla policy without a latency limit.
    """
    front = list(study.front)
    if policy.policy == "trial":
        chosen = study.trial(policy.trial)
        if chosen is None or not chosen.complete:
            raise InputError(f"trial {policy.trial} of study {study.name!r} is not a completed trial; "
                             f"front trials: {', '.join(str(t.number) for t in front) or 'none'}")
        # Not `chosen.feasible`: a NaN violation (a limit that could not be measured) never refused a trial here.
        if any(v > 0 for v in chosen.constraints.values()):
            raise InputError(f"trial {policy.trial} breaks a constraint ({chosen.constraints}); choose a feasible one")
        return Choice(chosen)
    if not front:
        raise InputError(f"study {study.name!r} has no feasible trials on its front; run more trials")
    pool, why = beating_baseline(study, front, objectives)
    if policy.policy == "sla":
        return _within_sla(front, pool, why, objectives, policy.sla_p95_ms, policy.prefer)
    points = to_minimization(np.array([t.values for t in pool], dtype=float), objectives)
    seen = to_minimization(np.array([t.values for t in study.measured if t.complete and t.feasible
                                     and t.values is not None], dtype=float).reshape(-1, len(objectives)),
                           objectives)
    return _preferred_tie(pool[knee_index(points, seen)], pool, objectives, why, policy.prefer)


def _within_sla(front: list[TrialView], pool: list[TrialView], why: str, objectives: tuple[Objective, ...],
                limit: float | None, prefer: Preference) -> Choice:
    """The ``sla`` policy: the best point of ``pool`` on the first maximised objective with ``latency_p95_ms``
    within ``limit``; of the whole front (the baseline aside) when no point of ``pool`` is within it.

    Raises:
        ConfigError: no limit. InputError: no front point is within it.
    """
    if limit is None:
        raise ConfigError("the sla policy needs --sla-p95-ms")

    def within(trials: list[TrialView]) -> list[TrialView]:
        return [t for t in trials if t.metrics["latency_p95_ms"] <= limit]

    if not within(pool) and within(front):
        pool = [t for t in front if not t.baseline] or front
        why = "no front point within the SLA beats the baseline on every objective on dev"
    if not within(pool):
        best = min(t.metrics["latency_p95_ms"] for t in front)
        raise InputError(f"no front trial has latency_p95_ms <= {limit:g} (the fastest has "
                         f"{best:.0f}); raise --sla-p95-ms or use --policy knee")
    quality = next((o for o in objectives if o.direction == "maximize"), objectives[0])
    sign = 1 if quality.direction == "maximize" else -1
    pool = within(pool)
    best = max(pool, key=lambda t: (sign * t.metrics[quality.metric], -t.metrics["latency_p95_ms"]))
    return _preferred_tie(best, pool, objectives, why, prefer)


def _preferred_tie(chosen: TrialView, pool: list[TrialView], objectives: tuple[Objective, ...], why: str,
                   prefer: Preference) -> Choice:
    """``chosen``, or among the points of ``pool`` tied with it (``racing.ties``: their measurements cannot tell
    them apart on any objective) the one the policy prefers — the best on the first maximised objective
    (``accuracy``) or the lowest latency (``latency``) — saying so."""
    tied = ties({t.number: bounds_of(t.metrics, objectives) for t in pool})[chosen.number]
    if not tied:
        return Choice(chosen, why)
    if prefer == "policy":
        note = (f"trial {chosen.number} is tied with trial{'s' if len(tied) > 1 else ''} "
                f"{', '.join(str(n) for n in tied)} (their intervals overlap on every objective): kept the "
                "policy's own pick (--prefer accuracy or latency would break the tie)")
        return Choice(chosen, f"{why}; {note}" if why else note)
    group = [chosen, *(t for t in pool if t.number in tied)]
    quality = next((o for o in objectives if o.direction == "maximize"), None)
    latency = next((o.metric for o in objectives if o.direction == "minimize"
                    and o.metric.startswith(("latency_", "ttft_"))), "latency_p95_ms")
    if prefer == "accuracy" and quality is not None:
        pick = max(group, key=lambda t: (t.metrics[quality.metric], -t.metrics[latency], -t.number))
        reason = f"the highest {quality.metric} ({pick.metrics[quality.metric]:.3g}; --prefer latency: the fastest)"
    else:
        pick = min(group, key=lambda t: (t.metrics[latency], t.number))
        reason = f"the lowest {latency} ({pick.metrics[latency]:.0f}; --prefer accuracy: the most accurate)"
    note = (f"trial {chosen.number} is tied with trial{'s' if len(tied) > 1 else ''} "
            f"{', '.join(str(n) for n in tied)} (their intervals overlap on every objective): chose trial "
            f"{pick.number}, {reason}")
    return Choice(pick, f"{why}; {note}" if why else note)


def machine_states_note(study: StudySnapshot, chosen: TrialView, *, threshold: float) -> str | None:
    """Whether the chosen trial's dev latencies and the baseline trial's come from different machine states
    (:mod:`pipeline.search.drift`: their references differ by more than ``threshold``, relative).

    Returns:
        A sentence saying so (the held-out side-by-side measures both at once), or None: no baseline, the
        baseline chosen, or the same machine state.
    """
    served = study.baseline
    if served is None or served.number == chosen.number:
        return None
    note = machine_note((f"trial {chosen.number}", chosen.reference),
                        (f"the baseline (trial {served.number})", served.reference), threshold)
    return None if note is None else f"on dev, {note}; the held-out side-by-side measures both at once"
