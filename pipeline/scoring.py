"""Scoring: pure functions from answers and timings to numbers.

Per request, :func:`score_answer` parses an answer (code fences tolerated), validates it against the
experiment's JSON schema and compares it with the expected answer. Per trial, :func:`summarize` turns the
request records into the metrics that MLflow records and Optuna optimises.

Strings are compared after case folding and collapsing white space; numbers and booleans exactly.
Latency percentiles use numpy's default linear interpolation over the timed requests only: warm-up calls
and model loads are never among them, and failed requests are counted apart. :func:`confidence_intervals`
gives percentile-bootstrap 95% intervals of the headline metrics, so two trials whose intervals overlap are
not told apart by their measurements.

:func:`optimistic_bound` is the early-abort rule's arithmetic: the best value a metric can still reach when
the requests not yet run all come back perfect (correct, in 0 ms). A constraint that this best value already
breaks cannot be met by the trial, whatever its remaining requests give.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

import numpy as np
from jsonschema.protocols import Validator
from scipy.stats import bootstrap

__all__ = ["BOUNDED_METRICS", "CI_METRICS", "METRICS", "SERVER_METRICS", "AnswerScore", "RequestRecord",
           "confidence_intervals", "optimistic_bound", "parse_answer", "score_answer", "summarize"]

# Every trial metric, with the direction in which it is better.
METRICS: dict[str, str] = {
    "schema_valid_rate": "maximize",
    "parse_rate": "maximize",
    "action_accuracy": "maximize",
    "exact_match_rate": "maximize",
    "field_accuracy": "maximize",
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
    "failed_requests": "minimize",
    "model_loads": "minimize",
    "model_load_ms": "minimize",
    "requests_measured": "minimize",
    # only for backends with a server's own timings (Ollama)
    "server_ms_p50": "minimize",
    "server_ms_p95": "minimize",
    "overhead_ms_mean": "minimize",
    "overhead_ms_p95": "minimize",
}

SERVER_METRICS = ("server_ms_p50", "server_ms_p95", "overhead_ms_mean", "overhead_ms_p95")

# Metrics with a 95% bootstrap interval, logged as ``<metric>_ci95_low`` and ``<metric>_ci95_high``.
CI_METRICS = ("schema_valid_rate", "action_accuracy", "exact_match_rate", "latency_p50_ms", "latency_p95_ms")

# Metrics that no request can make better than a perfect one (correct, not truncated, 0 ms): their value over
# the requests so far plus perfect ones bounds every value the finished trial can have.
BOUNDED_METRICS = ("schema_valid_rate", "parse_rate", "action_accuracy", "exact_match_rate", "field_accuracy",
                   "latency_p50_ms", "latency_p95_ms", "latency_p99_ms", "latency_mean_ms", "ttft_p50_ms",
                   "ttft_p95_ms", "output_tokens_mean", "truncated_answers", "failed_requests")

_FENCE = re.compile(r"^\s*```[a-zA-Z0-9_-]*\s*\n?(.*?)\n?\s*```\s*$", re.DOTALL)


@dataclass(frozen=True)
class AnswerScore:
    parsed: bool
    schema_valid: bool
    action_correct: bool
    params_exact: bool
    field_accuracy: float
    exact_match: bool
    error: str = ""


@dataclass(frozen=True)
class RequestRecord:
    """One timed request: what was asked, what came back, how it scored and how long it took."""

    request_id: str
    request: str
    expected: dict[str, Any]
    answer: str
    score: AnswerScore
    latency_ms: float
    ttft_ms: float | None
    prefill_ms: float | None
    decode_ms: float | None
    decode_tokens: int | None
    prompt_tokens_estimated: int
    prompt_tokens_engine: int | None
    output_tokens: int
    truncated: bool
    failed: bool = False
    server_ms: float | None = None

    @property
    def overhead_ms(self) -> float | None:
        """Our wall clock minus the server's own total: network and queueing."""
        return None if self.server_ms is None else self.latency_ms - self.server_ms


def parse_answer(text: str) -> Any:
    """Parse a model answer as JSON, tolerating code fences and text around one JSON object.

    Returns:
        The parsed value.

    Raises:
        ValueError: no JSON value could be read from the text.
    """
    stripped = text.strip()
    fenced = _FENCE.match(stripped)
    if fenced:
        stripped = fenced.group(1).strip()
    try:
        return json.loads(stripped)
    except json.JSONDecodeError:
        start = stripped.find("{")
        if start < 0:
            raise ValueError("no JSON object in the answer") from None
        try:
            value, _ = json.JSONDecoder().raw_decode(stripped[start:])
        except json.JSONDecodeError as exc:
            raise ValueError(f"invalid JSON: {exc.msg}") from None
        return value


def _normalize(value: Any) -> Any:
    if isinstance(value, str):
        return " ".join(value.split()).casefold()
    if isinstance(value, dict):
        return {k: _normalize(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_normalize(v) for v in value]
    return value


def _flatten(params: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in params.items():
        if isinstance(value, dict) and value:
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def score_answer(text: str, expected: dict[str, Any], validator: Validator) -> AnswerScore:
    """Score one answer against the schema and the expected answer.

    ``field_accuracy`` is the share of parameter fields (nested ones flattened, e.g. ``fields.due``) present
    in either answer that hold equal values in both; an answer that is not an object scores 0.
    """
    try:
        answer = parse_answer(text)
    except ValueError as exc:
        return AnswerScore(False, False, False, False, 0.0, False, str(exc))
    errors = sorted(validator.iter_errors(answer), key=lambda e: e.path)
    error = errors[0].message[:200] if errors else ""
    if not isinstance(answer, dict):
        return AnswerScore(True, not errors, False, False, 0.0, False, error or "answer is not an object")
    normalized, wanted = _normalize(answer), _normalize(expected)
    got_params = normalized.get("params") if isinstance(normalized.get("params"), dict) else {}
    got, want = _flatten(got_params), _flatten(wanted["params"])
    keys = set(got) | set(want)
    matched = sum(1 for k in keys if k in got and k in want and got[k] == want[k])
    return AnswerScore(
        parsed=True,
        schema_valid=not errors,
        action_correct=normalized.get("action") == wanted["action"],
        params_exact=got_params == wanted["params"],
        field_accuracy=matched / len(keys) if keys else 1.0,
        exact_match=normalized == wanted,
        error=error,
    )


def _percentile(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


def _mean(values: list[float]) -> float:
    return float(np.mean(values)) if values else float("nan")


def summarize(records: list[RequestRecord], *, model_loads: int = 0, model_load_ms: float = 0.0) -> dict[str, float]:
    """Aggregate the request records of one trial into its metrics (see :data:`METRICS`).

    Quality rates are over all requests, a failed request counting as wrong. Latency statistics are over the
    requests that completed; a trial with none reports NaN for them.
    """
    n = len(records)
    done = [r for r in records if not r.failed]
    latencies = [r.latency_ms for r in done]
    ttfts = [r.ttft_ms for r in done if r.ttft_ms is not None]
    decoded = [r for r in done if r.decode_ms is not None and r.decode_tokens is not None]
    decode_ms = [r.decode_ms for r in decoded]
    decode_tokens = sum(r.decode_tokens for r in decoded)

    def rate(flag: str) -> float:
        return sum(getattr(r.score, flag) for r in records) / n if n else 0.0

    metrics = {
        "schema_valid_rate": rate("schema_valid"),
        "parse_rate": rate("parsed"),
        "action_accuracy": rate("action_correct"),
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
        "failed_requests": float(n - len(done)),
        "model_loads": float(model_loads),
        "model_load_ms": float(model_load_ms),
        "requests_measured": float(n),
    }
    served = [r for r in done if r.server_ms is not None]
    if served:
        server = [r.server_ms for r in served]
        overhead = [r.overhead_ms for r in served]
        metrics.update({"server_ms_p50": _percentile(server, 50), "server_ms_p95": _percentile(server, 95),
                        "overhead_ms_mean": _mean(overhead), "overhead_ms_p95": _percentile(overhead, 95)})
    return metrics


def confidence_intervals(records: list[RequestRecord], *, level: float = 0.95, resamples: int = 2000,
                         seed: int = 0) -> dict[str, float]:
    """Percentile-bootstrap intervals of :data:`CI_METRICS`, resampling the trial's requests.

    Returns:
        ``<metric>_ci95_low`` and ``<metric>_ci95_high`` for each metric; NaN when fewer than two requests
        count (latencies: the completed requests).
    """
    rates = np.array([[r.score.schema_valid, r.score.action_correct, r.score.exact_match] for r in records], float)
    latencies = np.array([r.latency_ms for r in records if not r.failed])
    samples = [(CI_METRICS[:3], rates.T, lambda *flags, axis: np.stack([f.mean(axis=axis) for f in flags])),
               (CI_METRICS[3:], latencies[None, :],
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


_PERFECT = AnswerScore(True, True, True, True, 1.0, True)


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
    perfect = RequestRecord("", "", {}, "", _PERFECT, 0.0, 0.0, None, None, None, 0, None, 0, False)
    return summarize(records + [perfect] * max(total - len(records), 0))[metric]
