"""Trial metrics: pure functions from request records to the numbers MLflow records and Optuna optimises.

:data:`METRICS` names every trial metric with the direction in which it is better; an :class:`Objective` is one
of them and a direction, a :class:`Constraint` a limit on one. Per trial, :func:`summarize` turns the request
records (each with its answer's score, :mod:`pipeline.job.scoring`) into those metrics.

Latency percentiles use numpy's default linear interpolation over the timed requests only: warm-up calls
and model loads are never among them, and failed requests are counted apart. :func:`confidence_intervals`
gives percentile-bootstrap 95% intervals of the headline metrics, so two trials whose intervals overlap are
not told apart by their measurements.

:func:`optimistic_bound` is the early-abort rule's arithmetic: the best value a metric can still reach when
the requests not yet run all come back perfect (correct, in 0 ms). A constraint that this best value already
breaks cannot be met by the trial, whatever its remaining requests give.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from scipy.stats import bootstrap

from pipeline.job.pointers import ANY, MISSING, format_pointer, parse_pointer
from pipeline.job.scoring import AnswerScore

__all__ = ["BOUNDED_METRICS", "CI_METRICS", "FIELD_METRIC", "METRICS", "SERVER_METRICS", "Constraint", "Direction",
           "Objective", "RequestRecord", "confidence_intervals", "field_metric", "metric_name", "measured_metrics", "metric_direction", "optimistic_bound", "summarize"]

# Every trial metric, with the direction in which it is better. Besides these, one ``field_accuracy.<path>``
# per field path of the expected answers (see :func:`field_metric`).
METRICS: dict[str, str] = {
    "schema_valid_rate": "maximize",
    "parse_rate": "maximize",
    "exact_match_rate": "maximize",
    "field_accuracy": "maximize",
    "label_accuracy": "maximize",  # only for experiments with a label
    "latency_p50_ms": "minimize",
    "latency_p95_ms": "minimize",
    "latency_p99_ms": "minimize",
    "latency_mean_ms": "minimize",
    "ttft_p50_ms": "minimize",
    "ttft_p95_ms": "minimize",
    "prefill_ms_mean": "minimize",
    "decode_ms_mean": "minimize",
    "decode_tokens_per_s": "maximize",
    "output_tokens_mean": "minimize",
    "prompt_tokens_estimated": "minimize",
    "prompt_tokens_engine": "minimize",
    "truncated_answers": "minimize",
    # requests whose prompt the server cut to fit num_ctx (Ollama drops the oldest messages silently)
    "truncated_inputs": "minimize",
    "failed_requests": "minimize",
    "model_loads": "minimize",
    "model_load_ms": "minimize",
    "requests_measured": "minimize",
    # over the trial's measured span (first request sent to last answer), at its concurrency
    "throughput_rps": "maximize",
    "output_tokens_per_s": "maximize",
    "goodput_rps": "maximize",
    # only for backends with a server's own timings (Ollama)
    "server_ms_p50": "minimize",
    "server_ms_p95": "minimize",
    "overhead_ms_mean": "minimize",
    "overhead_ms_p95": "minimize",
    # only for a model that thinks before it answers (Ollama's `think`)
    "thinking_ttft_p50_ms": "minimize",
    "thinking_ms_p50": "minimize",
    "thinking_ms_p95": "minimize",
    "thinking_tokens_mean": "minimize",
    "thinking_exhausted": "minimize",  # requests whose thinking used up num_predict: no answer
}

Direction = Literal["maximize", "minimize"]


@dataclass(frozen=True)
class Objective:
    metric: str
    direction: Direction


@dataclass(frozen=True)
class Constraint:
    """An SLA limit on a trial metric; a trial breaking it is infeasible."""

    metric: str
    max: float | None = None
    min: float | None = None

    def violation(self, value: float) -> float:
        """Optuna's convention: ``<= 0`` is feasible, the size of a positive value is how far off it is."""
        if self.max is not None:
            return value - self.max
        return self.min - value  # type: ignore[operator]

    def describe(self) -> str:
        return f"{self.metric} <= {self.max:g}" if self.max is not None else f"{self.metric} >= {self.min:g}"


SERVER_METRICS = ("server_ms_p50", "server_ms_p95", "overhead_ms_mean", "overhead_ms_p95")
FIELD_METRIC = "field_accuracy."

# Metrics with a 95% bootstrap interval, logged as ``<metric>_ci95_low`` and ``<metric>_ci95_high``.
CI_METRICS = ("schema_valid_rate", "exact_match_rate", "field_accuracy", "label_accuracy", "latency_p50_ms",
              "latency_p95_ms")
_CI_RATES = CI_METRICS[:4]

# Metrics that no request can make better than a perfect one (correct, not truncated, 0 ms): their value over
# the requests so far plus perfect ones bounds every value the finished trial can have.
BOUNDED_METRICS = ("schema_valid_rate", "parse_rate", "exact_match_rate", "field_accuracy", "label_accuracy",
                   "latency_p50_ms", "latency_p95_ms", "latency_p99_ms", "latency_mean_ms", "ttft_p50_ms",
                   "ttft_p95_ms", "output_tokens_mean", "truncated_answers", "truncated_inputs", "failed_requests")

_QUICK_RATES = {"schema_valid_rate": lambda s: bool(s.schema_valid), "parse_rate": lambda s: bool(s.parsed),
                "exact_match_rate": lambda s: bool(s.exact_match), "field_accuracy": lambda s: s.field_accuracy}
_QUICK_LATENCIES = {
    **{f"latency_p{q}_ms": ("latency_ms", lambda v, q=q: _percentile(v, q)) for q in (50, 95, 99)},
    "latency_mean_ms": ("latency_ms", lambda v: _mean(v)),
    **{f"ttft_p{q}_ms": ("ttft_ms", lambda v, q=q: _percentile(v, q)) for q in (50, 95)},
}

def field_metric(path: str) -> str:
    """The metric name of one field's accuracy: ``field_accuracy./params/title``. MLflow allows no ``*`` in a
    metric name, so an array item is written ``-`` there: ``field_accuracy./line_items/-/price``."""
    return FIELD_METRIC + format_pointer(tuple("-" if p == ANY else p for p in parse_pointer(path)))


def metric_name(name: str) -> str:
    """A metric name as recorded: ``field_accuracy.`` paths may be written with ``*`` or ``-`` for array items."""
    if name.startswith(FIELD_METRIC):
        try:
            return field_metric(name[len(FIELD_METRIC):])
        except ValueError:
            return name
    return name


def metric_direction(name: str) -> str | None:
    """Whether a metric is maximised or minimised; None for a name that is no metric."""
    if name.startswith(FIELD_METRIC):
        try:
            parse_pointer(name[len(FIELD_METRIC):])
        except ValueError:
            return None
        return "maximize"
    return METRICS.get(name)


@dataclass(frozen=True)
class RequestRecord:
    """One timed request: what was asked, what came back, how it scored and how long it took."""

    request_id: str
    request: str
    expected: Any
    answer: str
    score: AnswerScore
    latency_ms: float
    ttft_ms: float | None = None
    prefill_ms: float | None = None
    decode_ms: float | None = None
    decode_tokens: int | None = None
    prompt_tokens_estimated: int = 0
    prompt_tokens_engine: int | None = None
    output_tokens: int = 0
    truncated: bool = False
    failed: bool = False
    server_ms: float | None = None
    input_truncated: bool = False
    thinking_ttft_ms: float | None = None
    thinking_ms: float | None = None
    thinking_tokens: int | None = None

    @property
    def overhead_ms(self) -> float | None:
        """Our wall clock minus the server's own total: network and queueing."""
        return None if self.server_ms is None else self.latency_ms - self.server_ms

    @property
    def thinking_exhausted(self) -> bool:
        """The model thought until ``num_predict`` ran out and never answered."""
        return bool(self.thinking_tokens) and self.truncated and not self.answer


def _percentile(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


def _mean(values: list[float]) -> float:
    return float(np.mean(values)) if values else float("nan")


def summarize(records: list[RequestRecord], *, model_loads: int = 0, model_load_ms: float = 0.0,
              span_s: float | None = None, slos: dict[str, float] | None = None) -> dict[str, float]:
    """Aggregate the request records of one trial into its metrics (see :data:`METRICS`).

    With ``span_s``, the seconds from the first request sent to the last answer, the load metrics are there too:
    requests and output tokens per second, and goodput as ``vllm bench serve --goodput`` defines it, the
    requests per second that completed within every per-request limit of ``slos`` (``latency_ms``,
    ``ttft_ms``; with none, every completed request counts).

    Quality rates are over all requests, a failed request counting as wrong. ``label_accuracy`` is there when
    the experiment has a label, and ``field_accuracy.<path>`` for each field path the expected answers use (the
    share of that path's fields, in either answer, that are right). Latency statistics are over the requests
    that completed; a trial with none reports NaN for them.
    """
    n = len(records)
    done = [r for r in records if not r.failed]
    latencies = [r.latency_ms for r in done]
    ttfts = [r.ttft_ms for r in done if r.ttft_ms is not None]
    decoded = [r for r in done if r.decode_ms is not None and r.decode_tokens is not None]
    decode_ms = [r.decode_ms for r in decoded]
    decode_tokens = sum(r.decode_tokens for r in decoded)

    def rate(flag: str) -> float:
        return sum(bool(getattr(r.score, flag)) for r in records) / n if n else 0.0

    metrics = {
        "schema_valid_rate": rate("schema_valid"),
        "parse_rate": rate("parsed"),
        "exact_match_rate": rate("exact_match"),
        "field_accuracy": sum(r.score.field_accuracy for r in records) / n if n else 0.0,
        "latency_p50_ms": _percentile(latencies, 50),
        "latency_p95_ms": _percentile(latencies, 95),
        "latency_p99_ms": _percentile(latencies, 99),
        "latency_mean_ms": _mean(latencies),
        "ttft_p50_ms": _percentile(ttfts, 50),
        "ttft_p95_ms": _percentile(ttfts, 95),
        "prefill_ms_mean": _mean([r.prefill_ms for r in done if r.prefill_ms is not None]),
        "decode_ms_mean": _mean(decode_ms),
        "decode_tokens_per_s": decode_tokens / (sum(decode_ms) / 1000) if sum(decode_ms) > 0 else float("nan"),
        "output_tokens_mean": _mean([r.output_tokens for r in done]),
        "prompt_tokens_estimated": _mean([r.prompt_tokens_estimated for r in records]),
        "prompt_tokens_engine": _mean([r.prompt_tokens_engine for r in done if r.prompt_tokens_engine is not None]),
        "truncated_answers": float(sum(r.truncated for r in done)),
        "truncated_inputs": float(sum(r.input_truncated for r in done)),
        "failed_requests": float(n - len(done)),
        "model_loads": float(model_loads),
        "model_load_ms": float(model_load_ms),
        "requests_measured": float(n),
    }
    if any(r.score.label_correct is not None for r in records):
        metrics["label_accuracy"] = rate("label_correct")
    served = [r for r in done if r.server_ms is not None]
    if served:
        server = [r.server_ms for r in served]
        overhead = [r.overhead_ms for r in served]
        metrics.update({"server_ms_p50": _percentile(server, 50), "server_ms_p95": _percentile(server, 95),
                        "overhead_ms_mean": _mean(overhead), "overhead_ms_p95": _percentile(overhead, 95)})
    thought = [r for r in done if r.thinking_tokens is not None]
    if thought:
        spans = [r.thinking_ms for r in thought]
        metrics.update({"thinking_ttft_p50_ms": _percentile([r.thinking_ttft_ms for r in thought], 50),
                        "thinking_ms_p50": _percentile(spans, 50), "thinking_ms_p95": _percentile(spans, 95),
                        "thinking_tokens_mean": sum(r.thinking_tokens for r in thought) / len(done),
                        "thinking_exhausted": float(sum(r.thinking_exhausted for r in done))})
    if span_s:
        good = [r for r in done if all(_within(r, key, limit) for key, limit in (slos or {}).items())]
        metrics.update({"throughput_rps": len(done) / span_s,
                        "output_tokens_per_s": sum(r.output_tokens for r in done) / span_s,
                        "goodput_rps": len(good) / span_s})
    metrics.update(_field_metrics(records))
    return metrics


def _within(record: RequestRecord, key: str, limit: float) -> bool:
    value = getattr(record, key)
    return value is not None and value <= limit


def _field_metrics(records: list[RequestRecord]) -> dict[str, float]:
    paths = {f.path for r in records for f in r.score.fields if f.expected is not MISSING}
    right: Counter[str] = Counter()
    total: Counter[str] = Counter()
    for record in records:
        for f in record.score.fields:
            if f.path in paths:
                total[f.path] += 1
                right[f.path] += f.correct
    return {field_metric(path): right[path] / total[path] for path in sorted(paths)}


def confidence_intervals(records: list[RequestRecord], *, level: float = 0.95, resamples: int = 2000,
                         seed: int = 0) -> dict[str, float]:
    """Percentile-bootstrap intervals of :data:`CI_METRICS`, resampling the trial's requests.

    Returns:
        ``<metric>_ci95_low`` and ``<metric>_ci95_high`` for each metric the records have (``label_accuracy``
        only with a label); NaN when fewer than two requests count (latencies: the completed requests).
    """
    labelled = any(r.score.label_correct is not None for r in records)
    rate_names = [m for m in _CI_RATES if labelled or m != "label_accuracy"]
    values = {"schema_valid_rate": lambda r: r.score.schema_valid, "exact_match_rate": lambda r: r.score.exact_match,
              "field_accuracy": lambda r: r.score.field_accuracy, "label_accuracy": lambda r: r.score.label_correct}
    rates = np.array([[float(bool(values[m](r))) if m != "field_accuracy" else values[m](r) for m in rate_names]
                      for r in records], float).reshape(len(records), len(rate_names))
    latencies = np.array([r.latency_ms for r in records if not r.failed])
    samples = [(rate_names, rates.T, lambda *columns, axis: np.stack([c.mean(axis=axis) for c in columns])),
               (list(CI_METRICS[4:]), latencies[None, :],
                lambda ms, axis: np.stack([np.percentile(ms, 50, axis=axis), np.percentile(ms, 95, axis=axis)]))]
    intervals: dict[str, float] = {}
    for metrics, data, statistic in samples:
        lows = highs = [float("nan")] * len(metrics)
        if data.shape[-1] >= 2:
            result = bootstrap(tuple(data), statistic, paired=True, vectorized=True, confidence_level=level,
                               n_resamples=resamples, method="percentile", rng=np.random.default_rng(seed))
            lows, highs = result.confidence_interval
        for metric, low, high in zip(metrics, lows, highs):
            intervals[f"{metric}_ci95_low"], intervals[f"{metric}_ci95_high"] = float(low), float(high)
    return intervals


def measured_metrics(records: list[RequestRecord], *, seed: int = 0, model_loads: int = 0,
                     model_load_ms: float = 0.0, span_s: float | None = None,
                     slos: dict[str, float] | None = None) -> dict[str, float]:
    """A measured setting's metrics: :func:`summarize` and, beside each, its :func:`confidence_intervals`."""
    return {**summarize(records, model_loads=model_loads, model_load_ms=model_load_ms, span_s=span_s, slos=slos),
            **confidence_intervals(records, seed=seed)}


def optimistic_bound(records: list[RequestRecord], total: int, metric: str) -> float:
    """The best value of ``metric`` a trial of ``total`` requests can still reach after ``records``.

    The requests not yet run are taken as perfect: correct, not truncated, answered in 0 ms. Every metric of
    :data:`BOUNDED_METRICS` is monotone in each request, so no real outcome of those requests can do better
    (a latency percentile only falls when 0 ms values are added; a rate only rises with correct answers).

    Raises:
        ValueError: ``metric`` is not bounded this way.
    """
    if metric not in BOUNDED_METRICS:
        raise ValueError(f"{metric} has no optimistic bound")
    missing = max(total - len(records), 0)
    # The common ones directly (what summarize gives on the records plus perfect ones; checked against it).
    if metric in _QUICK_RATES:
        flag = _QUICK_RATES[metric]
        return (sum(float(flag(r.score)) for r in records) + missing) / (len(records) + missing)
    if metric in _QUICK_LATENCIES:
        field, statistic = _QUICK_LATENCIES[metric]
        values = [getattr(r, field) for r in records if not r.failed and getattr(r, field) is not None]
        return statistic(values + [0.0] * missing)
    labelled = any(r.score.label_correct is not None for r in records)
    perfect = RequestRecord("", "", None, "", AnswerScore(True, True, True, 1.0, True if labelled else None),
                            0.0, ttft_ms=0.0)
    return summarize(records + [perfect] * max(total - len(records), 0))[metric]
