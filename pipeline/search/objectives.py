"""A trial's verdict for Optuna: its metrics, constraint violations and objective values, from its outcome."""

from __future__ import annotations

import optuna

from pipeline.errors import BackendError
from pipeline.measure.metrics import measured_metrics
from pipeline.measure.racing import bound_metrics
from pipeline.measure.records import RequestRecord
from pipeline.measure.registry import Constraint
from pipeline.measure.runner import TrialOutcome
from pipeline.search.config import StudyConfig
from pipeline.search.trials import ABORTED, INFEASIBLE, METRICS, RACED

__all__ = ["CONTEXT_FIT", "request_slos", "trial_values", "truncation_reason"]

# The constraint every trial has: its prompts fit the context (violated: the setting was not run, or the server
# cut prompts to fit it: the number of those).
CONTEXT_FIT = "context_fit"


def trial_values(trial: optuna.Trial, outcome: TrialOutcome, config: StudyConfig, *,
                 extra: dict[str, float] | None = None) -> list[float]:
    """Set the trial's metrics (with ``extra``, what the study measured besides: the requests it ran) and
    constraints; return its objective values.

    A setting that cannot fit the context is not run: it gets the worst values (0 for a maximised metric, the
    request timeout for a minimised one) and a violated ``context_fit`` constraint, so it is never on the front. A
    trial whose prompts the server cut to fit (Ollama drops the oldest messages silently: pipeline.engines.truncation)
    keeps its measured metrics and breaks ``context_fit`` by the number of those prompts.
    A trial stopped early has the metrics of the requests it ran; the constraint it cannot meet is set from
    the best value it could still have reached, which breaks it. A trial stopped by racing keeps the metrics of
    the requests it ran (honest estimates on fewer requests) and says why in the user attr ``raced``. Every
    measured trial records its objectives' intervals at the study's error rate (``racing.bound_metrics``). A limit
    is judged on its metric's value, or where the registry says so on its 95% interval's far end
    (``Constraint.reading``: a false-hit limit is met only when the interval shows it).

    Raises:
        BackendError: every request of the trial failed.
    """
    if outcome.infeasible:
        penalty = config.engine.request_timeout_s * 1000
        metrics = {o.metric: 0.0 if o.direction == "maximize" else penalty for o in config.objectives}
        trial.set_user_attr(INFEASIBLE, outcome.infeasible)
        trial.set_constraint(CONTEXT_FIT, 1.0)
        for constraint in config.constraints:
            trial.set_constraint(constraint.metric, 0.0)
    else:
        if all(r.failed for r in outcome.records):
            raise BackendError(f"all {len(outcome.records)} requests failed: {outcome.records[0].score.error}")
        metrics = measured_metrics(outcome.records, seed=config.study.seed, model_loads=outcome.model_loads,
                                   model_load_ms=outcome.model_load_ms, span_s=outcome.span_s,
                                   slos=request_slos(config.constraints), resources=outcome.resources,
                                   price_per_hour=config.cost.per_hour)
        cut = metrics["truncated_inputs"]
        trial.set_constraint(CONTEXT_FIT, cut)
        if cut:
            trial.set_user_attr(INFEASIBLE, truncation_reason(outcome.records))
        metrics.update(bound_metrics(outcome.records, config.objectives, config.evaluation.error_rate,
                                     seed=config.study.seed))
        limits = {c.metric: c.reading(metrics) for c in config.constraints}
        if outcome.aborted:
            trial.set_user_attr(ABORTED, outcome.aborted.describe())
            limits[outcome.aborted.constraint.metric] = outcome.aborted.bound
        if outcome.raced:
            trial.set_user_attr(RACED, outcome.raced.describe())
        for constraint in config.constraints:
            trial.set_constraint(constraint.metric, constraint.violation(limits[constraint.metric]))
    trial.set_user_attr(METRICS, {**metrics, **(extra or {})})  # one storage write: the dict is large
    return [metrics[o.metric] for o in config.objectives]


def truncation_reason(records: list[RequestRecord]) -> str:
    """Why a setting whose prompts the server cut is not usable, in one line."""
    cut = [r.request_id for r in records if r.input_truncated]
    return (f"the server cut {len(cut)} of {len(records)} prompts to fit num_ctx (first: request {cut[0]}), dropping "
            "their oldest messages (the few-shot examples); raise num_ctx or use fewer examples")


def request_slos(constraints: tuple[Constraint, ...]) -> dict[str, float]:
    """The per-request limits that goodput counts: each ``max`` on a latency or TTFT metric of the config taken
    as a limit on every request (``latency_p95_ms <= 2000`` → each request's latency within 2000 ms), the
    strictest where several name the same measure."""
    slos: dict[str, float] = {}
    for constraint in constraints:
        key = next((k for k, prefix in (("latency_ms", "latency_"), ("ttft_ms", "ttft_"))
                    if constraint.metric.startswith(prefix)), None)
        if key is not None and constraint.max is not None:
            slos[key] = min(slos.get(key, constraint.max), constraint.max)
    return slos
