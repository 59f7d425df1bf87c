"""The metric registry: every trial metric declared once.

A :class:`Metric` says everything the rest of the package needs to know about one metric: its name, the
direction in which it is better, its unit and the short header a table shows, how one request contributes to
it (``request``: the request's value, None where it does not count), how the requests of a trial aggregate
(``value``), whether the early-abort rule can bound it (``bounded``: no request can make it better than a perfect
one — correct, not truncated, answered in 0 ms), which interval racing and ties give it (``interval``),
whether every trial records its 95% interval (``reported_interval``), which requests a rare event's rate is over
(``at_risk``), whether a limit on it must be shown met by that interval (``shown``) and what a limit reads for a
trial without it (``absent``), and what it means
(``description``: the metric table of docs/metrics.md is generated from it, tests/test_docs.py). Scoring
(:mod:`pipeline.measure.metrics`), the intervals (:mod:`pipeline.measure.intervals`), racing, paired gain, the
config's check of metric names and the terminal tables all read :data:`REGISTRY`.

Adding a metric is one declaration in :data:`REGISTRY` (docs/layout.md's "a metric" shows one). Besides the
declared metrics, each field path of the expected answers has its accuracy, ``field_accuracy.<path>``
(:func:`field_metric`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Literal

import numpy as np

from pipeline.job.pointers import ANY, format_pointer, parse_pointer
from pipeline.measure.records import RequestRecord

__all__ = ["FIELD_METRIC", "METRICS", "REGISTRY", "Constraint", "Direction", "Metric", "Objective", "Trial",
           "Role", "bounded_metrics", "ci_metrics", "feasible", "field_metric", "lookup", "metric_direction",
           "metric_name", "server_metrics", "with_role"]

Direction = Literal["maximize", "minimize"]
# How racing and ties bound a metric: "wilson" (a rate of 0/1 outcomes), "share" (a mean of per-request shares:
# bootstrap, Wilson when every request scored the same), "statistic" (the bootstrap of a latency statistic), or
# None (unbounded: the metric never decides anything).
IntervalKind = Literal["wilson", "share", "statistic"] | None
# What a metric is to a promotion policy (pipeline.promote.policies): "accuracy" (a share of right answers or
# fields: the most accurate setting), "latency" (a time a request waits: the fastest), or "" (neither).
Role = Literal["accuracy", "latency", ""]
FIELD_METRIC = "field_accuracy."


@dataclass(frozen=True)
class Trial:
    """What a trial's metrics are computed from: its request records, the completed ones, and what the trial
    measured besides (model loads, the span of its requests, the per-request limits that count as good)."""

    records: Sequence[RequestRecord]
    model_loads: int = 0
    model_load_ms: float = 0.0
    span_s: float | None = None
    slos: dict[str, float] = field(default_factory=dict)
    resources: Mapping[str, float] = field(default_factory=dict)  # what the engine said the setting held
    price_per_hour: float | None = None  # what the machine costs an hour (the config's ``cost``); None: no cost

    @property
    def done(self) -> list[RequestRecord]:
        return [r for r in self.records if not r.failed]


@dataclass(frozen=True)
class Metric:
    """One trial metric (see the module docstring). ``value`` returns None when the trial has no such metric
    (a label accuracy without a label, server timings in process)."""

    name: str
    direction: Direction
    unit: str
    value: Callable[[Trial], float | None]
    request: Callable[[RequestRecord], float | None] | None = None
    statistic: Callable[..., np.ndarray] | None = None  # over per-request values, along ``axis``
    completed_only: bool = False  # ``request`` counts completed requests only (latencies)
    bounded: bool = False
    interval: IntervalKind = None
    reported_interval: bool = False
    header: str = ""
    group: str = "trial"  # which metrics are there together: trial, label, server, prefix, thinking, cache, load
    description: str = ""  # what it means, one sentence in Markdown (docs/metrics.md is generated from it)
    role: Role = ""       # what a promotion policy reads it as
    # A rate of something only some requests can have (``at_risk``; None: every request): its interval is
    # Wilson's over those requests, scaled by their share of the trial, and [0, 0] for a trial with none.
    at_risk: Callable[[RequestRecord], bool] | None = None
    # A limit on it is met only when its reported interval shows it: judged at the interval's end farthest from
    # meeting it, not at the value (a limit on wrong answers served wants evidence that they are few).
    shown: bool = False
    absent: float | None = None  # what a limit on it reads for a trial without it (None: not met)


def _percentile(values: Sequence[float], q: float) -> float:
    return float(np.percentile(values, q)) if len(values) else float("nan")


def _mean(values: Sequence[float]) -> float:
    return float(np.mean(values)) if len(values) else float("nan")


def _rate(name: str, flag: Callable[[RequestRecord], bool | None], *, header: str = "", reported: bool = False,
          group: str = "trial", description: str = "", role: Role = "accuracy") -> Metric:
    """A share of requests with a property, a failed request counting as without it."""
    def value(trial: Trial) -> float | None:
        n = len(trial.records)
        return sum(bool(flag(r)) for r in trial.records) / n if n else 0.0

    return Metric(name, "maximize", "share", value, request=lambda r: float(bool(flag(r))),
                  statistic=lambda x, axis: np.mean(x, axis=axis), bounded=True, interval="wilson",
                  reported_interval=reported, header=header, group=group, description=description, role=role)


def _latency(name: str, attribute: str, q: float | None, *, header: str = "", reported: bool = False,
             description: str = "") -> Metric:
    """A percentile (``q``) or the mean of a per-request time over the completed requests that have one."""
    def values(trial: Trial) -> list[float]:
        return [getattr(r, attribute) for r in trial.done if getattr(r, attribute) is not None]

    if q is None:
        aggregate, statistic = _mean, (lambda x, axis: np.mean(x, axis=axis))
    else:
        aggregate = lambda v, q=q: _percentile(v, q)  # noqa: E731
        statistic = lambda x, axis, q=q: np.percentile(x, q, axis=axis)  # noqa: E731
    return Metric(name, "minimize", "ms", lambda t: aggregate(values(t)), request=lambda r: getattr(r, attribute),
                  statistic=statistic, completed_only=True, bounded=True, interval="statistic",
                  reported_interval=reported, header=header, description=description, role="latency")


def _decoded(trial: Trial) -> list[RequestRecord]:
    return [r for r in trial.done if r.decode_ms is not None and r.decode_tokens is not None]


def _decode_rate(trial: Trial) -> float:
    decoded = _decoded(trial)
    seconds = sum(r.decode_ms for r in decoded) / 1000
    return sum(r.decode_tokens for r in decoded) / seconds if seconds > 0 else float("nan")


def _count(name: str, counted: Callable[[RequestRecord], bool], *, bounded: bool, over_done: bool = True,
           description: str = "") -> Metric:
    """How many requests (completed ones, by default) have a property."""
    def value(trial: Trial) -> float:
        return float(sum(bool(counted(r)) for r in (trial.done if over_done else trial.records)))

    return Metric(name, "minimize", "requests", value, bounded=bounded, description=description)


def _labelled(trial: Trial) -> bool:
    return any(r.score.label_correct is not None for r in trial.records)


def _served(trial: Trial) -> list[RequestRecord]:
    return [r for r in trial.done if r.server_ms is not None]


def _cached(trial: Trial) -> bool:
    return any(r.cache_ms is not None for r in trial.records)


def _hits(trial: Trial) -> list[RequestRecord]:
    return [r for r in trial.done if r.cache]


def _prefixed(trial: Trial) -> list[RequestRecord]:
    """The requests whose engine said how much of their prompt it evaluated (the rest came from its KV cache)."""
    return [r for r in trial.done if r.prompt_tokens_engine and r.prompt_tokens_evaluated is not None]


def _prefix_share(trial: Trial) -> float:
    prefixed = _prefixed(trial)
    reused = sum(max(r.prompt_tokens_engine - r.prompt_tokens_evaluated, 0) for r in prefixed)
    return reused / sum(r.prompt_tokens_engine for r in prefixed)


def _thought(trial: Trial) -> list[RequestRecord]:
    return [r for r in trial.done if r.thinking_tokens is not None]


def _when(present: Callable[[Trial], object], value: Callable[[Trial], float]) -> Callable[[Trial], float | None]:
    return lambda trial: value(trial) if present(trial) else None


def _timed_split(trial: Trial) -> list[RequestRecord]:
    """The completed requests the engine answered with its own prefill and decode times."""
    return [r for r in trial.done if not r.cache and r.prefill_ms is not None and r.decode_ms is not None]


def _share(name: str, part: Callable[[RequestRecord], float], description: str) -> Metric:
    """A part of the engine-answered requests' time over their whole latency; absent without the engine's split."""
    def value(trial: Trial) -> float | None:
        split = _timed_split(trial)
        total = sum(r.latency_ms for r in split)
        return min(sum(part(r) for r in split) / total, 1.0) if split and total > 0 else None

    return Metric(name, "minimize", "share", value, group="breakdown", description=description)


def _resource(name: str, header: str, description: str) -> Metric:
    """A quantity the engine reports for the whole trial (``Trial.resources``), smaller better; absent where the
    engine cannot tell."""
    return Metric(name, "minimize", "MiB", lambda trial: trial.resources.get(name), header=header, group="memory",
                  description=description)


def _priced(name: str, header: str, served: Callable[[Trial], float], description: str) -> Metric:
    """The price of the trial's measured span spread over what it served (``served``: in thousands of answers,
    millions of tokens); only with a price and a span, in the price's currency."""
    def value(trial: Trial) -> float | None:
        count = served(trial)
        if trial.price_per_hour is None or not trial.span_s or not count:
            return None
        return trial.price_per_hour * trial.span_s / 3600 / count

    return Metric(name, "minimize", "currency", value, header=header, group="cost", description=description)


def _per_span(value: Callable[[Trial], float]) -> Callable[[Trial], float | None]:
    """A rate over the trial's measured span, at its concurrency; only when the span was measured."""
    return lambda trial: value(trial) / trial.span_s if trial.span_s else None


def _good(trial: Trial) -> float:
    """Requests that completed within every per-request limit (``vllm bench serve --goodput``'s definition)."""
    def within(record: RequestRecord, key: str, limit: float) -> bool:
        value = getattr(record, key)
        return value is not None and value <= limit
    return float(sum(all(within(r, k, limit) for k, limit in trial.slos.items()) for r in trial.done))


_LABELLED_RATE = _rate("label_accuracy", lambda r: r.score.label_correct, header="label", reported=True,
                       group="label", description="share of answers with the expected value at the label path "
                                                  "(experiments with a label)")
_LATENCY = "end-to-end wall clock of a request, over timed requests only"
_SERVER = ("the server's own time for a request (Ollama's `total_duration`; llama-server's `prompt_ms` + "
           "`predicted_ms`)")
_OVERHEAD = "our wall clock minus the server's own time: network, HTTP and queueing in the server"
_SPAN = "per second of the trial's span (first request sent to last answer), at its `concurrency`"

# In the order a trial's metrics are recorded.
_DECLARED: tuple[Metric, ...] = (
    _rate("schema_valid_rate", lambda r: r.score.schema_valid, header="valid", reported=True,
          description="share of answers that parse as JSON (code fences tolerated) and validate against the "
                      "request's JSON schema, formats included"),
    _rate("parse_rate", lambda r: r.score.parsed, description="share of answers that parse as JSON at all"),
    _rate("exact_match_rate", lambda r: r.score.exact_match, header="exact", reported=True,
          description="share of answers right in every field"),
    Metric("field_accuracy", "maximize", "share",
           lambda t: sum(r.score.field_accuracy for r in t.records) / len(t.records) if t.records else 0.0,
           request=lambda r: r.score.field_accuracy, statistic=lambda x, axis: np.mean(x, axis=axis), bounded=True,
           interval="share", reported_interval=True, header="fields", role="accuracy",
           description="mean over requests of the (weighted) share of fields right: every leaf value of the "
                       "expected answer and of the answer (ignored paths left out) compared under the scoring "
                       "rules; a field only one of them has is wrong"),
    _latency("latency_p50_ms", "latency_ms", 50, header="p50 ms", reported=True,
             description=f"median {_LATENCY} (numpy's linear percentile)"),
    _latency("latency_p95_ms", "latency_ms", 95, header="p95 ms", reported=True,
             description=f"95th percentile of the {_LATENCY}"),
    _latency("latency_p99_ms", "latency_ms", 99,
             description=f"99th percentile of the {_LATENCY} (with 20 requests, close to the maximum)"),
    _latency("latency_mean_ms", "latency_ms", None, description=f"mean {_LATENCY}"),
    _latency("ttft_p50_ms", "ttft_ms", 50, header="ttft ms",
             description="median time to the first streamed token of the answer"),
    _latency("ttft_p95_ms", "ttft_ms", 95, description="95th percentile of the time to the first streamed token"),
    Metric("prefill_ms_mean", "minimize", "ms",
           lambda t: _mean([r.prefill_ms for r in t.done if r.prefill_ms is not None]),
           description="the engine's own time to evaluate the prompt, mean over requests"),
    Metric("decode_ms_mean", "minimize", "ms", lambda t: _mean([r.decode_ms for r in _decoded(t)]),
           description="the engine's own time to generate the tokens after the first, mean over requests"),
    Metric("decode_tokens_per_s", "maximize", "tokens/s", _decode_rate, header="tok/s",
           description="decoded tokens over decode time"),
    # where the time of the requests the engine answered goes (pipeline.measure.bottleneck names the bottleneck)
    _share("prefill_share", lambda r: r.prefill_ms or 0.0,
           "share of the engine-answered requests' time spent evaluating the prompt"),
    _share("decode_share", lambda r: r.decode_ms or 0.0,
           "share of the engine-answered requests' time spent generating after the first token"),
    _share("other_share", lambda r: max(r.latency_ms - (r.prefill_ms or 0.0) - (r.decode_ms or 0.0), 0.0),
           "share of the engine-answered requests' time outside prefill and decode: the client, HTTP, waiting for "
           "a slot, the first token's sampling, the grammar, the cache lookup"),
    Metric("output_tokens_mean", "minimize", "tokens", lambda t: _mean([r.output_tokens for r in t.done]),
           bounded=True, description="answer length, mean over completed requests"),
    Metric("prompt_tokens_estimated", "minimize", "tokens",
           lambda t: _mean([r.prompt_tokens_estimated for r in t.records]),
           description="mean prompt size as tiktoken estimates it before the call"),
    Metric("prompt_tokens_engine", "minimize", "tokens",
           lambda t: _mean([r.prompt_tokens_engine for r in t.done if r.prompt_tokens_engine is not None]),
           description="mean prompt size as the engine counts it"),
    _count("truncated_answers", lambda r: r.truncated, bounded=True,
           description="answers that hit `num_predict`"),
    # requests whose prompt the server cut to fit num_ctx (Ollama drops the oldest messages silently)
    _count("truncated_inputs", lambda r: r.input_truncated, bounded=True,
           description="requests whose prompt the server cut to fit `num_ctx` (Ollama, silently): a trial with any "
                       "breaks `context_fit`"),
    _count("failed_requests", lambda r: r.failed, bounded=True, over_done=False,
           description="requests that failed (they count as wrong in every rate and are left out of latencies)"),
    Metric("model_loads", "minimize", "loads", lambda t: float(t.model_loads),
           description="model (re)loads this trial caused"),
    Metric("model_load_ms", "minimize", "ms", lambda t: float(t.model_load_ms),
           description="the time of those loads, never inside a latency"),
    Metric("requests_measured", "minimize", "requests", lambda t: float(len(t.records)), header="requests",
           description="timed requests the trial's metrics are over (fewer than planned when it stopped early or "
                       "was raced; more when it tops up an earlier trial)"),
    # only for experiments with a label
    replace(_LABELLED_RATE, value=_when(_labelled, _LABELLED_RATE.value)),
    # only for backends with a server's own timings (Ollama, llama-server)
    Metric("server_ms_p50", "minimize", "ms", _when(_served, lambda t: _percentile([r.server_ms for r in _served(t)],
                                                                                   50)), group="server",
           description=f"median of {_SERVER}", role="latency"),
    Metric("server_ms_p95", "minimize", "ms", _when(_served, lambda t: _percentile([r.server_ms for r in _served(t)],
                                                                                   95)), group="server",
           description=f"95th percentile of {_SERVER}", role="latency"),
    Metric("overhead_ms_mean", "minimize", "ms", _when(_served, lambda t: _mean([r.overhead_ms for r in _served(t)])),
           group="server", description=f"{_OVERHEAD}, mean"),
    Metric("overhead_ms_p95", "minimize", "ms",
           _when(_served, lambda t: _percentile([r.overhead_ms for r in _served(t)], 95)), group="server",
           description=f"{_OVERHEAD}, 95th percentile"),
    # only for a model that thinks before it answers (Ollama's `think`)
    Metric("thinking_ttft_p50_ms", "minimize", "ms",
           _when(_thought, lambda t: _percentile([r.thinking_ttft_ms for r in _thought(t)], 50)), group="thinking",
           description="a model that thinks (Ollama's `think`): median time to its first thinking token"),
    Metric("thinking_ms_p50", "minimize", "ms",
           _when(_thought, lambda t: _percentile([r.thinking_ms for r in _thought(t)], 50)), group="thinking",
           description="median thinking span, from the first thinking token to the last"),
    Metric("thinking_ms_p95", "minimize", "ms",
           _when(_thought, lambda t: _percentile([r.thinking_ms for r in _thought(t)], 95)), group="thinking",
           description="95th percentile of the thinking span"),
    Metric("thinking_tokens_mean", "minimize", "tokens",
           _when(_thought, lambda t: sum(r.thinking_tokens for r in _thought(t)) / len(t.done)), group="thinking",
           description="tokens thought (one streamed piece each), mean over completed requests"),
    # requests whose thinking used up num_predict: no answer
    Metric("thinking_exhausted", "minimize", "requests",
           _when(_thought, lambda t: float(sum(r.thinking_exhausted for r in t.done))), group="thinking",
           description="requests whose thinking used up `num_predict`: no answer"),
    # only for an engine that says how much of a prompt it evaluated (llama-server, llama.cpp in process)
    Metric("prompt_cached_share", "maximize", "share", _when(_prefixed, _prefix_share), group="prefix",
           description="share of the prompt tokens the engine took from its KV cache, a prefix an earlier request "
                       "left there (the system prompt, the examples), instead of evaluating them: llama-server's "
                       "`cache_n`, llama.cpp's reused prefix in process; Ollama does not say"),
    # only for a setting served through a response cache (`cache: exact`); the latencies, accuracies and rates above
    # are over every request, hits included: what the traffic was served
    Metric("cache_hit_rate", "maximize", "share", _when(_cached, lambda t: len(_hits(t)) / len(t.records)),
           request=lambda r: float(bool(r.cache)), statistic=lambda x, axis: np.mean(x, axis=axis), interval="wilson",
           header="hits", group="cache",
           description="a setting with a response cache: share of requests served from it (the first of a request "
                       "is a miss)"),
    Metric("false_hit_rate", "minimize", "share",
           _when(_cached, lambda t: sum(bool(r.false_hit) for r in t.records) / len(t.records)),
           request=lambda r: float(bool(r.false_hit)), statistic=lambda x, axis: np.mean(x, axis=axis),
           interval="wilson", reported_interval=True, header="false", group="cache",
           at_risk=lambda r: r.false_hit is not None, shown=True, absent=0.0,
           description="a setting with a response cache: share of requests served a hit that is worse for them than "
                       "for the request it was made for (a semantic hit on another meaning, \"#43\" given \"#42\"'s "
                       "answer), scored against their own expected answers; its interval is Wilson's over the "
                       "requests a meaning-based hit could have served, and a limit on it is met only when the "
                       "interval's upper end is within it"),
    Metric("engine_requests_saved", "maximize", "requests", _when(_cached, lambda t: float(len(_hits(t)))),
           group="cache", description="requests the engine did not answer because the cache did"),
    Metric("cache_hit_ms_p50", "minimize", "ms",
           _when(lambda t: bool(_hits(t)), lambda t: _percentile([r.latency_ms for r in _hits(t)], 50)),
           group="cache", description="median latency of a hit: the cache's own hashing and lookup, never taken as 0"),
    Metric("cache_ms_mean", "minimize", "ms",
           _when(_cached, lambda t: _mean([r.cache_ms for r in t.done if r.cache_ms is not None])), group="cache",
           description="the cache's own time per request, hit or miss (a miss pays it before the engine answers), "
                       "mean"),
    # over the trial's measured span (first request sent to last answer), at its concurrency
    Metric("throughput_rps", "maximize", "requests/s", _per_span(lambda t: len(t.done)), group="load",
           description=f"completed requests {_SPAN}"),
    Metric("output_tokens_per_s", "maximize", "tokens/s", _per_span(lambda t: sum(r.output_tokens for r in t.done)),
           group="load", description=f"output tokens {_SPAN}"),
    Metric("goodput_rps", "maximize", "requests/s", _per_span(_good), group="load",
           description=f"requests within every per-request latency limit of the config, {_SPAN} (`vllm bench "
                       "serve --goodput`)"),
    # what the setting held, as the engine reports it (Backend.resources): one key there, one declaration here
    _resource("memory_mb", "mem MiB",
              "peak resident memory of what serves the trial, MiB: the llama-server process, the whole process in "
              "process (every context it keeps loaded included), Ollama's own figure for the loaded model "
              "(`/api/ps` size)"),
    _resource("kv_cache_mb", "KV MiB",
              "the KV cache of the trial's context, MiB, computed from the model's metadata: layers × cells × "
              "KV heads × (key + value width) × the cache type's bytes (pipeline.engines.memory)"),
    _resource("model_mb", "", "the model's weights file, MiB"),
    # the config's price of the machine an hour, spread over what the trial served in its measured span
    _priced("cost_per_1k_answers", "cost/1k", lambda t: len(t.done) / 1000,
            "what 1,000 answers cost at the config's price per hour (`cost`), at the trial's measured throughput "
            "(its concurrency: one request at a time unless `evaluation.concurrency` says more)"),
    _priced("cost_per_1m_output_tokens", "cost/1M tok", lambda t: sum(r.output_tokens for r in t.done) / 1e6,
            "what a million output tokens cost at the config's price per hour, at the trial's measured throughput"),
)

REGISTRY: dict[str, Metric] = {m.name: m for m in _DECLARED}
# Every declared metric with the direction in which it is better.
METRICS: dict[str, str] = {name: m.direction for name, m in REGISTRY.items()}


# What is derived from the declarations is read from REGISTRY when asked, so that a metric added to it (as a test
# adds one) is in each of these at once.
def server_metrics() -> tuple[str, ...]:
    """The metrics only a server's own timings give."""
    return tuple(name for name, m in REGISTRY.items() if m.group == "server")


def ci_metrics() -> tuple[str, ...]:
    """Metrics with a 95% bootstrap interval, logged as ``<metric>_ci95_low`` and ``<metric>_ci95_high``:
    the shares first."""
    reported = [name for name, m in REGISTRY.items() if m.reported_interval]
    return tuple(sorted(reported, key=lambda name: REGISTRY[name].unit != "share"))


def bounded_metrics() -> tuple[str, ...]:
    """Metrics whose value over the requests so far plus perfect ones bounds every value the finished trial can
    have (early abort's optimistic bound)."""
    return tuple(name for name, m in REGISTRY.items() if m.bounded)


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


def lookup(name: str) -> Metric | None:
    """The declaration of a metric; for ``field_accuracy.<path>``, one made for that path (a share of the path's
    fields that are right, over every request); None for a name that is no metric."""
    if name in REGISTRY:
        return REGISTRY[name]
    if name.startswith(FIELD_METRIC):
        try:
            parse_pointer(name[len(FIELD_METRIC):])
        except ValueError:
            return None
        return Metric(name, "maximize", "share", lambda t: None, interval="share", role="accuracy")
    return None


def with_role(objectives: Sequence[Objective], role: Role) -> Objective | None:
    """The first of ``objectives`` whose metric is declared with ``role`` (in its better direction), or None."""
    return next((o for o in objectives if (m := lookup(o.metric)) is not None and m.role == role
                 and o.direction == m.direction), None)


def metric_direction(name: str) -> str | None:
    """Whether a metric is maximised or minimised; None for a name that is no metric."""
    metric = lookup(name)
    return None if metric is None else metric.direction


@dataclass(frozen=True)
class Objective:
    metric: str
    direction: Direction

    @property
    def sign(self) -> float:
        """1.0 when larger is better (maximised), -1.0 when smaller is: ``value * sign`` grows as it gets better."""
        return 1.0 if self.direction == "maximize" else -1.0


def feasible(violations: Iterable[float]) -> bool:
    """Whether a trial meets every constraint, by Optuna's rule (``Study.best_trials``): every violation <= 0.
    A NaN violation (a limit whose metric could not be measured) is not met: nothing shows it is."""
    return all(v <= 0 for v in violations)


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

    def breaks(self, value: float) -> bool:
        """Whether ``value`` shows the limit broken: measured (not NaN) and past it. Evidence, for a decision
        that acts on it (early abort, a refusal, an explanation); a trial's feasibility is :func:`feasible`."""
        return not math.isnan(value) and self.violation(value) > 0

    def reading(self, metrics: Mapping[str, float]) -> float:
        """What this limit is judged on in a trial's ``metrics``: the metric's value; for a metric declared
        ``shown``, the end of its reported interval farthest from meeting the limit; for a metric the trial does
        not have, the declared ``absent`` value (NaN: not met)."""
        declared = lookup(self.metric)
        if self.metric not in metrics:
            return declared.absent if declared is not None and declared.absent is not None else math.nan
        if declared is not None and declared.shown:
            return metrics.get(f"{self.metric}_ci95_{'high' if self.max is not None else 'low'}", math.nan)
        return metrics[self.metric]

    def describe(self) -> str:
        return f"{self.metric} <= {self.max:g}" if self.max is not None else f"{self.metric} >= {self.min:g}"
