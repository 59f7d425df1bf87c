"""The gain of a candidate setting over a baseline, measured on the same requests (pure functions).

Latency is compared as ratios — candidate p50 / baseline p50, candidate p95 / baseline p95 (below 1: faster) —
and accuracy as differences (candidate − baseline: above 0, more accurate). Each comes with a 95% paired
bootstrap interval: requests are resampled, and a resampled request brings both its measurements (request *i*
of the baseline and request *i* of the candidate were the same request, measured side by side), so whatever
made one request hard or one moment slow counts for both alike. A failed request counts as wrong in every
accuracy and is left out of the latencies, as in a trial's metrics.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Literal

import numpy as np
import pandas as pd

from pipeline.measure.intervals import percentile_bootstrap
from pipeline.measure.records import RequestRecord
from pipeline.measure.registry import FIELD_METRIC, REGISTRY, Objective, field_metric, lookup

__all__ = ["LATENCY_RATIOS", "Gain", "accuracy_metrics", "gain_frame", "gain_metrics", "is_accuracy", "paired_gain",
           "slower"]

# (metric, percentile) compared as candidate / baseline
LATENCY_RATIOS = (("latency_p50_ms", 50), ("latency_p95_ms", 95))


@dataclass(frozen=True)
class Gain:
    """One metric of both settings and the change between them, with its 95% paired-bootstrap interval."""

    metric: str
    kind: Literal["ratio", "difference"]
    baseline: float
    candidate: float
    change: float
    low: float
    high: float

    def describe(self) -> str:
        if self.kind == "ratio":
            return f"{self.metric}: ×{self.change:.3g} [{self.low:.3g}, {self.high:.3g}]"
        return f"{self.metric}: {self.change:+.3g} [{self.low:+.3g}, {self.high:+.3g}]"

    @property
    def decided(self) -> bool:
        """Whether the interval leaves out "no change" (1 for a ratio, 0 for a difference)."""
        neutral = 1.0 if self.kind == "ratio" else 0.0
        return not self.low <= neutral <= self.high


def _shares(records: list[RequestRecord], metric: str) -> tuple[np.ndarray, np.ndarray]:
    """Per request, what counts toward an accuracy metric and out of how much: the metric is sum / sum."""
    if metric == "field_accuracy":
        return np.array([r.score.field_accuracy for r in records], float), np.ones(len(records))
    declared = REGISTRY.get(metric)
    if declared is not None and declared.interval == "wilson":  # a rate of 0/1 outcomes
        return np.array([declared.request(r) for r in records], float), np.ones(len(records))
    if metric.startswith(FIELD_METRIC):
        fields = [[f for f in r.score.fields if field_metric(f.path) == metric] for r in records]
        return (np.array([sum(f.correct for f in fs) for fs in fields], float),
                np.array([len(fs) for fs in fields], float))
    raise ValueError(f"{metric} is not an accuracy metric")


def paired_gain(baseline: list[RequestRecord], candidate: list[RequestRecord], accuracy: list[str], *,
                seed: int = 0, resamples: int = 2000, level: float = 0.95) -> list[Gain]:
    """The latency ratios and the accuracy differences of ``candidate`` over ``baseline``.

    ``baseline[i]`` and ``candidate[i]`` must be measurements of the same request.

    Returns:
        One :class:`Gain` per latency ratio (:data:`LATENCY_RATIOS`), then per metric of ``accuracy``; intervals
        are NaN with fewer than two requests.

    Raises:
        ValueError: the two lists differ in length or requests, or a metric is not an accuracy.
    """
    if len(baseline) != len(candidate) or any(b.request_id != c.request_id for b, c in zip(baseline, candidate)):
        raise ValueError("the baseline and the candidate must be measured on the same requests, in the same order")
    rng = np.random.default_rng(seed)
    gains = []
    base_ms = np.array([np.nan if r.failed else r.latency_ms for r in baseline])
    cand_ms = np.array([np.nan if r.failed else r.latency_ms for r in candidate])
    for metric, q in LATENCY_RATIOS:
        def ratio(b: np.ndarray, c: np.ndarray, axis: int = -1, q: float = q) -> np.ndarray:
            with np.errstate(invalid="ignore", divide="ignore"):
                return np.nanpercentile(c, q, axis=axis) / np.nanpercentile(b, q, axis=axis)
        point_b, point_c = _nan_percentile(base_ms, q), _nan_percentile(cand_ms, q)
        gains.append(Gain(metric, "ratio", point_b, point_c, point_c / point_b,
                          *_interval((base_ms, cand_ms), ratio, rng, resamples, level)))
    for metric in accuracy:
        nb, db = _shares(baseline, metric)
        nc, dc = _shares(candidate, metric)

        def difference(nb: np.ndarray, db: np.ndarray, nc: np.ndarray, dc: np.ndarray, axis: int = -1) -> np.ndarray:
            with np.errstate(invalid="ignore", divide="ignore"):
                return nc.sum(axis=axis) / dc.sum(axis=axis) - nb.sum(axis=axis) / db.sum(axis=axis)
        value_b, value_c = _share(nb, db), _share(nc, dc)
        gains.append(Gain(metric, "difference", value_b, value_c, value_c - value_b,
                          *_interval((nb, db, nc, dc), difference, rng, resamples, level)))
    return gains


def _share(numerator: np.ndarray, denominator: np.ndarray) -> float:
    return float(numerator.sum() / denominator.sum()) if denominator.sum() else float("nan")


def _nan_percentile(values: np.ndarray, q: float) -> float:
    return float(np.nanpercentile(values, q)) if np.isfinite(values).any() else float("nan")


def _interval(data: tuple[np.ndarray, ...], statistic, rng: np.random.Generator, resamples: int,
              level: float) -> tuple[float, float]:
    if len(data[0]) < 2:
        return float("nan"), float("nan")
    low, high = percentile_bootstrap(data, statistic, level=level, resamples=resamples, rng=rng, paired=True)
    return float(low), float(high)


def is_accuracy(metric: str) -> bool:
    """Whether a metric is a share of right answers or fields (one :func:`paired_gain` compares)."""
    declared = lookup(metric)
    return declared is not None and declared.unit == "share"


def accuracy_metrics(objectives: Sequence[Objective], *, labelled: bool) -> list[str]:
    """The accuracies a gain is reported for: the study's maximised objectives that are accuracies, then field
    accuracy, exact match, label accuracy (with a label) and schema validity."""
    named = [o.metric for o in objectives if o.direction == "maximize" and is_accuracy(o.metric)]
    rest = ["field_accuracy", "exact_match_rate", *(["label_accuracy"] if labelled else []), "schema_valid_rate"]
    return list(dict.fromkeys([*named, *rest]))


def slower(gains: list[Gain], names: tuple[str, str] = ("the baseline", "the candidate")) -> str:
    """A sentence saying the second of ``names`` is slower than the first (a p50 or p95 ratio above 1), or
    ``""``."""
    latency = [g for g in gains if g.kind == "ratio" and g.change > 1]
    if not latency:
        return ""
    told = " and ".join(f"{g.metric.removeprefix('latency_').removesuffix('_ms')} ×{g.change:.2f} "
                        f"[{g.low:.2f}, {g.high:.2f}]" for g in latency)
    sure = all(g.decided for g in latency)
    return (f"{names[1]} is slower than {names[0]}: {told}"
            + ("" if sure else " (an interval holds 1: not told apart from equal speed)"))


def gain_metrics(gains: list[Gain], prefix: str = "gain.") -> dict[str, float]:
    """MLflow metrics of the gains: ``gain.<metric>_ratio`` or ``gain.<metric>_diff``, and its interval."""
    metrics: dict[str, float] = {}
    for g in gains:
        key = f"{prefix}{g.metric}_{'ratio' if g.kind == 'ratio' else 'diff'}"
        metrics.update({key: g.change, f"{key}_ci95_low": g.low, f"{key}_ci95_high": g.high})
    return metrics


def gain_frame(gains: list[Gain]) -> pd.DataFrame:
    """The gains as a table: metric, kind, baseline, candidate, change, low, high."""
    return pd.DataFrame([asdict(g) for g in gains], columns=list(Gain.__dataclass_fields__))
