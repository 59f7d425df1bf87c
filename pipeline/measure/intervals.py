"""Intervals of trial metrics, every estimator in one place: Wilson's score interval and the percentile
bootstrap, unpaired (one trial's requests) and paired (two settings on the same requests).

- :func:`reported_intervals`: the 95% intervals every trial records beside its metrics (``<metric>_ci95_low``,
  ``_ci95_high``) for the metrics the registry marks ``reported_interval``: the percentile bootstrap over the
  trial's requests, the rates resampled together and the latencies over the completed requests; a rare event's
  rate (the registry's ``at_risk``: false hits) Wilson's over the requests that could have it, scaled by their
  share (a bootstrap of no event is [0, 0], which would show any limit met).
- :func:`interval`: the two-sided ``1 - alpha`` interval that ties and racing read, by the metric's declared
  ``interval`` kind: a rate of 0/1 outcomes gets Wilson's score interval, which stays honest at 0 and 1 and for a
  handful of requests (0 of 8 correct: at most 0.32 at ``alpha`` 0.05); a mean of per-request shares the
  bootstrap, widened to Wilson's when every request scored the same (the bootstrap's width is then 0); a latency
  statistic the bootstrap of that statistic; any other metric is unbounded, so it never decides anything.
- :func:`paired_gaps`: how much better one setting is than another on each objective on the requests both
  answered, resampling the requests together, so that what makes a request hard or slow for both cancels out.
- :func:`percentile_bootstrap`: the one call to SciPy's bootstrap, which the paired gain of
  :mod:`pipeline.measure.gain` uses too.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence

import numpy as np
from scipy.stats import DegenerateDataWarning, binomtest, bootstrap, norm

from pipeline.measure.records import RequestRecord
from pipeline.measure.registry import FIELD_METRIC, REGISTRY, Metric, Objective, field_metric, lookup

__all__ = ["ERROR_RATE", "RESAMPLES", "interval", "paired_gaps", "per_request", "percentile_bootstrap",
           "reported_intervals", "signed_difference", "wilson"]

# The error rate of every interval and decision the tool reports unless a study configures its own
# (``evaluation.error_rate``): two-sided 95% intervals. Racing has its own (``evaluation.racing_error_rate``).
ERROR_RATE = 0.05
# Resamples of the intervals racing and ties read (the reported 95% intervals take 2000).
RESAMPLES = 1000


def wilson(successes: float, n: int, alpha: float) -> tuple[float, float]:
    """Wilson's score interval of ``successes`` out of ``n`` at the error rate ``alpha`` ((0, 1) for n = 0; a
    share that is no whole count, such as summed field accuracies, by the formula)."""
    if n == 0:
        return 0.0, 1.0
    if float(successes).is_integer():
        ci = binomtest(int(successes), n).proportion_ci(confidence_level=1 - alpha, method="wilson")
        return float(ci.low), float(ci.high)
    z = norm.ppf(1 - alpha / 2)
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def percentile_bootstrap(data: tuple[np.ndarray, ...], statistic: Callable[..., np.ndarray], *, level: float,
                         resamples: int, rng: np.random.Generator, paired: bool = False) -> tuple:
    """SciPy's vectorised percentile bootstrap of ``statistic`` over ``data`` (``paired``: the samples are
    resampled together, request by request). A resample that draws only failed requests (NaN) or one value many
    times is expected and not warned about.

    Returns:
        The interval's low and high ends (arrays where the statistic has several outputs).
    """
    with np.errstate(invalid="ignore", divide="ignore"), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="All-NaN slice", category=RuntimeWarning)
        warnings.filterwarnings("ignore", category=DegenerateDataWarning)
        result = bootstrap(data, statistic, paired=paired, vectorized=True, confidence_level=level,
                           n_resamples=resamples, method="percentile", rng=rng)
    return result.confidence_interval.low, result.confidence_interval.high


def reported_intervals(records: Sequence[RequestRecord], *, level: float = 1 - ERROR_RATE, resamples: int = 2000,
                       seed: int = 0) -> dict[str, float]:
    """The 95% percentile-bootstrap intervals every trial records, resampling its requests.

    Returns:
        ``<metric>_ci95_low`` and ``<metric>_ci95_high`` for each metric the registry marks
        ``reported_interval`` and the records have (``label_accuracy`` only with a label, ``false_hit_rate`` only
        through a cache); NaN when fewer than two requests count (latencies: the completed requests).
    """
    labelled = any(r.score.label_correct is not None for r in records)
    cached = any(r.cache_ms is not None for r in records)
    reported = [m for m in REGISTRY.values() if m.reported_interval and (labelled or m.group != "label")
                and (cached or m.group != "cache")]
    rare = [m for m in reported if m.at_risk is not None]  # Wilson's: a bootstrap of 0 events is [0, 0]
    reported = [m for m in reported if m.at_risk is None]
    shares = [m for m in reported if not m.completed_only]
    latencies = [m for m in reported if m.completed_only]
    rates = np.array([[m.request(r) for m in shares] for r in records], float).reshape(len(records), len(shares))
    # the completed requests that have every reported time, one row per latency metric, resampled together
    timed = [r for r in records if not r.failed and all(m.request(r) is not None for m in latencies)]
    times = np.array([[m.request(r) for r in timed] for m in latencies], float).reshape(len(latencies), len(timed))
    samples = [(shares, rates.T, lambda *columns, axis: np.stack([c.mean(axis=axis) for c in columns])),
               (latencies, times,
                lambda *columns, axis: np.stack([m.statistic(c, axis=axis) for m, c in zip(latencies, columns)]))]
    intervals: dict[str, float] = {}
    for metrics, data, statistic in samples:
        lows = highs = [float("nan")] * len(metrics)
        if metrics and data.shape[-1] >= 2:
            lows, highs = percentile_bootstrap(tuple(data), statistic, level=level, resamples=resamples,
                                               rng=np.random.default_rng(seed), paired=True)
        for metric, low, high in zip(metrics, lows, highs):
            intervals[f"{metric.name}_ci95_low"], intervals[f"{metric.name}_ci95_high"] = float(low), float(high)
    for metric in rare:
        intervals[f"{metric.name}_ci95_low"], intervals[f"{metric.name}_ci95_high"] = _at_risk(records, metric,
                                                                                               1 - level)
    return intervals


def _bootstrap(values: np.ndarray, statistic: Callable[..., np.ndarray], alpha: float,
               seed: int) -> tuple[float, float]:
    if len(values) < 2:
        return -math.inf, math.inf
    if np.all(values == values[0]):
        return float(values[0]), float(values[0])
    low, high = percentile_bootstrap((values,), statistic, level=1 - alpha, resamples=RESAMPLES,
                                     rng=np.random.default_rng(seed))
    return float(low), float(high)


def _field_shares(records: Sequence[RequestRecord], metric: str) -> np.ndarray:
    """One field path's verdicts, every field of that path in every request: what ``field_accuracy.<path>`` is."""
    return np.array([float(f.correct) for r in records for f in r.score.fields if field_metric(f.path) == metric],
                    float)


def interval(records: Sequence[RequestRecord], metric: str, alpha: float, *, seed: int = 0) -> tuple[float, float]:
    """The two-sided ``1 - alpha`` interval of one trial metric over ``records`` (see the module docstring)."""
    declared = lookup(metric)
    kind = declared.interval if declared is not None else None
    if kind == "wilson" and declared.at_risk is not None:
        return _at_risk(records, declared, alpha)
    if kind == "wilson":
        return wilson(float(sum(bool(declared.request(r)) for r in records)), len(records), alpha)
    if kind == "share":
        shares = (_field_shares(records, metric) if metric.startswith(FIELD_METRIC)
                  else np.array([declared.request(r) for r in records], float))
        if len(shares) and np.all(shares == shares[0]):
            return wilson(float(shares.sum()), len(shares), alpha)
        return _bootstrap(shares, lambda x, axis: np.mean(x, axis=axis), alpha, seed)
    if kind == "statistic":
        values = np.array([v for r in records if not r.failed and (v := declared.request(r)) is not None], float)
        return _bootstrap(values, declared.statistic, alpha, seed)
    return -math.inf, math.inf


def _at_risk(records: Sequence[RequestRecord], declared: Metric, alpha: float) -> tuple[float, float]:
    """Wilson's interval of a rate over the requests that could have the event, scaled by their share of all:
    a rare event's rate is no less certain for requests that could not have it, and exactly 0 with none."""
    exposed = [r for r in records if declared.at_risk(r)]  # type: ignore[misc]
    if not exposed:
        return 0.0, 0.0
    low, high = wilson(float(sum(bool(declared.request(r)) for r in exposed)), len(exposed), alpha)  # type: ignore[misc]
    share = len(exposed) / len(records)
    return low * share, high * share


def per_request(records: Sequence[RequestRecord], metric: str) -> tuple[np.ndarray, Callable[..., np.ndarray]] | None:
    """Each request's value of what ``metric`` summarises, and the statistic over an axis; None when the metric
    has no per-request rule (or a latency is missing for a request: a failed one)."""
    declared = REGISTRY.get(metric)
    if declared is None or declared.request is None or declared.statistic is None:
        return None
    values = [declared.request(r) for r in records]
    if declared.completed_only and any(r.failed or v is None for r, v in zip(records, values)):
        return None
    return np.array(values, float), declared.statistic


def paired_gaps(ours: Sequence[RequestRecord], theirs: Sequence[RequestRecord], objectives: Sequence[Objective],
                alpha: float, *, seed: int = 0) -> list[tuple[float, float, float]] | None:
    """How much better ``theirs`` is than ``ours`` on each objective, on the requests both answered (paired by
    request, in ``ours``' order): the estimate and the two-sided ``1 - alpha`` percentile-bootstrap interval of
    the difference, resampling the requests together (positive: theirs better). None when an objective has no
    per-request rule or the two share fewer than two requests."""
    first: dict[str, RequestRecord] = {}
    for record in theirs:
        first.setdefault(record.request_id, record)
    pairs = [(r, first[r.request_id]) for r in ours if r.request_id in first]
    if len(pairs) < 2:
        return None
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, len(pairs), (RESAMPLES, len(pairs)))
    gaps = []
    for objective in objectives:
        mine = per_request([a for a, _ in pairs], objective.metric)
        other = per_request([b for _, b in pairs], objective.metric)
        if mine is None or other is None:
            return None
        (x, statistic), (y, _) = mine, other
        sign = objective.sign
        estimate = sign * float(statistic(y, 0) - statistic(x, 0))
        resampled = sign * (statistic(y[picks], 1) - statistic(x[picks], 1))
        low, high = np.quantile(resampled, [alpha / 2, 1 - alpha / 2])
        gaps.append((estimate, float(low), float(high)))
    return gaps


def signed_difference(objective: Objective, gap: tuple[float, float, float]) -> tuple[float, float, float]:
    """A gap of :func:`paired_gaps` (how much better theirs is, positive: better) as ours minus theirs in the
    metric's own units, with its interval (low <= high)."""
    estimate, low, high = gap
    flip = -objective.sign                     # gap = sign × (theirs − ours)
    ends = sorted((flip * low, flip * high))
    return flip * estimate + 0.0, ends[0] + 0.0, ends[1] + 0.0  # + 0.0: no "-0" shown
