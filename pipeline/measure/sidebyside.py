"""Two settings measured side by side: the same requests, interleaved, so that the machine's drift hits both.

Each setting (an *arm*) runs on its own backend — for the embedded engine its own context and prompt cache, as
two servers would have — loaded and warmed up before the first timed request. Then the requests alternate
between the arms, and so does who goes first: request 1 A then B, request 2 B then A, request 3 A then B… A
machine that slows down over minutes (measured here: the same setting's p50 moved from 249 to 351 ms between
two runs 25 minutes apart) slows both arms alike, and neither arm always runs right after the other.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

from pipeline.engines.base import Backend
from pipeline.engines.config import EngineConfig
from pipeline.engines.registry import make_backend
from pipeline.engines.settings import InferenceSettings
from pipeline.job.experiment import Example
from pipeline.measure.runner import SettingRun, TrialOutcome, TrialPlan

__all__ = ["Arm", "SideBySide", "interleaving", "measure_on_own_backends", "measure_side_by_side"]


@dataclass(frozen=True)
class Arm:
    """One of the two settings: its name in reports, its settings, and its plan (with its own backend)."""

    name: str
    settings: InferenceSettings
    plan: TrialPlan


@dataclass
class SideBySide:
    """What each arm measured (``outcomes`` by arm name, records in request order) and the measuring order."""

    outcomes: dict[str, TrialOutcome]
    order: list[tuple[int, str]]

    @property
    def infeasible(self) -> str | None:
        """Why an arm cannot fit its context (then nothing was measured), or None."""
        return next((f"{name}: {o.infeasible}" for name, o in self.outcomes.items() if o.infeasible), None)


def interleaving(requests: int) -> list[tuple[int, int]]:
    """(request position, arm 0 or 1) in measuring order: each request on both arms, who goes first alternating."""
    return [(i, arm) for i in range(requests) for arm in ((0, 1) if i % 2 == 0 else (1, 0))]


def measure_side_by_side(first: Arm, second: Arm, examples: list[Example], *, repetitions: int = 1,
                         on_request: Callable[[], None] = lambda: None) -> SideBySide:
    """Measure both arms on ``examples`` (``repetitions`` passes), interleaved (see the module docstring).

    Returns:
        Both outcomes (records in the same request order, so that record *i* of each is the same request) and
        the order they were measured in; nothing is measured when either setting cannot fit its context.
    """
    arms = (first, second)
    runs = [SettingRun(arm.settings, examples, arm.plan) for arm in arms]
    result = SideBySide({arm.name: run.outcome for arm, run in zip(arms, runs)}, [])
    if any(run.check_fit() for run in runs):
        return result
    for run in runs:
        run.ready()
    count = len(runs[0].requests)
    for position, index in interleaving(count * repetitions):
        run = runs[index]
        run.measure(run.requests[position % count])
        result.order.append((position, arms[index].name))
        on_request()
    for run in runs:  # each arm served its own requests one at a time: its span is their time
        run.outcome.span_s = sum(r.latency_ms for r in run.outcome.records if not r.failed) / 1000.0
        run.held()
    return result


def measure_on_own_backends(first: tuple[str, InferenceSettings], second: tuple[str, InferenceSettings],
                            examples: list[Example], plan: TrialPlan, *, engine: EngineConfig,
                            first_backend: Backend | None = None, repetitions: int = 1,
                            on_request: Callable[[], None] = lambda: None) -> SideBySide:
    """:func:`measure_side_by_side` of two named settings: ``second`` on the plan's backend, ``first`` on one of
    its own — ``first_backend``, or one made from ``engine`` and closed afterwards."""
    own = first_backend is None
    backend = make_backend(engine)[0] if own else first_backend
    try:
        return measure_side_by_side(Arm(*first, replace(plan, backend=backend)), Arm(*second, plan), examples,
                                    repetitions=repetitions, on_request=on_request)
    finally:
        if own:
            backend.close()
