"""``sla``: the most accurate front point whose p95 latency is within the limit (``--sla-p95-ms``)."""

from __future__ import annotations

from pipeline.errors import ConfigError, InputError
from pipeline.measure.registry import Objective
from pipeline.promote.policies.base import (
    ERROR_RATE,
    BasePolicy,
    Choice,
    Options,
    beating_baseline,
    preferred_tie,
    require_front,
    role_objective,
)
from pipeline.search.snapshot import StudySnapshot
from pipeline.search.trials import TrialView


class Sla(BasePolicy):
    name = "sla"
    sentence = ("the most accurate front point with latency_p95_ms within --sla-p95-ms, among the points that beat "
                "the baseline on every objective when one does")
    needs = ("accuracy",)

    def check(self, options: Options) -> None:
        if options.sla_p95_ms is None:
            raise ConfigError("--policy sla needs --sla-p95-ms X")

    def choose(self, study: StudySnapshot, objectives: tuple[Objective, ...], options: Options, *,
               alpha: float = ERROR_RATE) -> Choice:
        """Raises: ConfigError: no limit. InputError: no front point is within it."""
        self.check(options)
        limit = float(options.sla_p95_ms)  # type: ignore[arg-type]  # checked: not None
        quality = role_objective(objectives, "accuracy", self.name)
        front = require_front(study)
        pool, why = beating_baseline(study, front, objectives)

        def within(trials: list[TrialView]) -> list[TrialView]:
            return [t for t in trials if t.metrics["latency_p95_ms"] <= limit]

        if not within(pool) and within(front):
            pool = [t for t in front if not t.baseline] or front
            why = "no front point within the SLA beats the baseline on every objective on dev"
        if not within(pool):
            best = min(t.metrics["latency_p95_ms"] for t in front)
            raise InputError(f"no front trial has latency_p95_ms <= {limit:g} (the fastest has "
                             f"{best:.0f}); raise --sla-p95-ms or use --policy accuracy")
        pool = within(pool)
        best = max(pool, key=lambda t: (t.metrics[quality.metric], -t.metrics["latency_p95_ms"]))
        return preferred_tie(study, best, pool, objectives, why, options.prefer, alpha=alpha)


POLICY = Sla()
