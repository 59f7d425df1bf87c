"""Trial metrics: pure functions from request records to the numbers MLflow records and Optuna optimises.

Every metric is declared once, in :mod:`pipeline.measure.registry`; :func:`summarize` computes each declared
metric a trial has (and one accuracy per field path), :func:`measured_metrics` adds the 95% intervals every
trial records (:func:`pipeline.measure.intervals.reported_intervals`).

Latency percentiles use numpy's default linear interpolation over the timed requests only: warm-up calls
and model loads are never among them, and failed requests are counted apart.

:func:`optimistic_bound` is the early-abort rule's arithmetic: the best value a metric can still reach when
the requests not yet run all come back perfect (correct, in 0 ms). A constraint that this best value already
breaks cannot be met by the trial, whatever its remaining requests give.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence

import numpy as np

from pipeline.job.pointers import MISSING
from pipeline.job.scoring import AnswerScore
from pipeline.measure.intervals import reported_intervals
from pipeline.measure.records import RequestRecord
from pipeline.measure.registry import REGISTRY, Trial, bounded_metrics, field_metric

__all__ = ["confidence_intervals", "measured_metrics", "optimistic_bound", "summarize"]

# The reported 95% intervals (kept under the name the package has always used for them).
confidence_intervals = reported_intervals


def summarize(records: Sequence[RequestRecord], *, model_loads: int = 0, model_load_ms: float = 0.0,
              span_s: float | None = None, slos: dict[str, float] | None = None,
              resources: Mapping[str, float] | None = None,
              price_per_hour: float | None = None) -> dict[str, float]:
    """Aggregate the request records of one trial into its metrics (see :data:`pipeline.measure.registry.REGISTRY`).

    With ``span_s``, the seconds from the first request sent to the last answer, the load metrics are there too:
    requests and output tokens per second, and goodput as ``vllm bench serve --goodput`` defines it, the
    requests per second that completed within every per-request limit of ``slos`` (``latency_ms``,
    ``ttft_ms``; with none, every completed request counts).

    Quality rates are over all requests, a failed request counting as wrong. ``label_accuracy`` is there when
    the experiment has a label, and ``field_accuracy.<path>`` for each field path the expected answers use (the
    share of that path's fields, in either answer, that are right). Latency statistics are over the requests
    that completed; a trial with none reports NaN for them.
    """
    trial = Trial(list(records), model_loads=model_loads, model_load_ms=model_load_ms, span_s=span_s,
                  slos=slos or {}, resources=resources or {}, price_per_hour=price_per_hour)
    metrics = {name: value for name, m in REGISTRY.items() if (value := m.value(trial)) is not None}
    metrics.update(_field_metrics(trial.records))
    return metrics


def _field_metrics(records: Sequence[RequestRecord]) -> dict[str, float]:
    paths = {f.path for r in records for f in r.score.fields if f.expected is not MISSING}
    right: Counter[str] = Counter()
    total: Counter[str] = Counter()
    for record in records:
        for f in record.score.fields:
            if f.path in paths:
                total[f.path] += 1
                right[f.path] += f.correct
    return {field_metric(path): right[path] / total[path] for path in sorted(paths)}


def measured_metrics(records: Sequence[RequestRecord], *, seed: int = 0, model_loads: int = 0,
                     model_load_ms: float = 0.0, span_s: float | None = None,
                     slos: dict[str, float] | None = None,
                     resources: Mapping[str, float] | None = None,
                     price_per_hour: float | None = None) -> dict[str, float]:
    """A measured setting's metrics: :func:`summarize` and, beside each, its reported 95% interval."""
    return {**summarize(records, model_loads=model_loads, model_load_ms=model_load_ms, span_s=span_s, slos=slos,
                        resources=resources, price_per_hour=price_per_hour),
            **reported_intervals(records, seed=seed)}


def optimistic_bound(records: list[RequestRecord], total: int, metric: str) -> float:
    """The best value of ``metric`` a trial of ``total`` requests can still reach after ``records``.

    The requests not yet run are taken as perfect: correct, not truncated, answered in 0 ms. Every metric of
    :func:`~pipeline.measure.registry.bounded_metrics` is monotone in each request, so no real outcome of those
    requests can do better (a latency percentile only falls when 0 ms values are added; a rate only rises with
    correct answers).

    Raises:
        ValueError: ``metric`` is not bounded this way.
    """
    if metric not in bounded_metrics():
        raise ValueError(f"{metric} has no optimistic bound")
    missing = max(total - len(records), 0)
    declared = REGISTRY[metric]
    # The per-request ones directly (what summarize gives on the records plus perfect ones; checked against it).
    if declared.group == "trial" and declared.request is not None and not declared.completed_only:
        return (sum(declared.request(r) for r in records) + missing) / (len(records) + missing)
    if declared.completed_only:
        values = [v for r in records if not r.failed and (v := declared.request(r)) is not None] + [0.0] * missing
        return float(declared.statistic(np.array(values, float), axis=0)) if values else float("nan")
    labelled = any(r.score.label_correct is not None for r in records)
    perfect = RequestRecord("", "", None, "", AnswerScore(True, True, True, 1.0, True if labelled else None),
                            0.0, ttft_ms=0.0)
    return summarize([*records, *[perfect] * missing])[metric]
