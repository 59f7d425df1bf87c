"""The metric registry: every metric a trial records is declared once, and a new declaration is all it takes for
a metric to be summarised, accepted by the config and shown in tables."""

from __future__ import annotations

import io
from dataclasses import replace

import numpy as np
import optuna
import pytest
from optuna.trial import TrialState
from rich.console import Console

from pipeline.job.experiment import load_experiment
from pipeline.job.scoring import AnswerScore, FieldResult
from pipeline.measure.bottleneck import verdict
from pipeline.measure.intervals import interval, per_request, reported_intervals, wilson
from pipeline.measure.metrics import optimistic_bound, summarize
from pipeline.measure.records import RequestRecord
from pipeline.measure.registry import (
    FIELD_METRIC,
    REGISTRY,
    Constraint,
    Metric,
    Objective,
    bounded_metrics,
    ci_metrics,
    feasible,
    lookup,
    server_metrics,
)
from pipeline.measure.runner import can_abort
from pipeline.render.tables import front_table
from pipeline.search.config import load_config
from pipeline.search.prepare import prepare_study
from pipeline.search.study import run_study
from pipeline.testing import FakeBackend, answers_by_request
from tests.conftest import EXPERIMENT, smoke_config


def record(i: int, *, valid: bool = True, right: float = 1.0, ms: float = 100.0, failed: bool = False,
           label: bool | None = True, server_ms: float | None = None, thinking: int | None = None) -> RequestRecord:
    fields = (FieldResult("/action", "a", "a" if right else "b", bool(right)),)
    score = AnswerScore(True, valid, right == 1.0, right, label, fields)
    return RequestRecord(f"r{i}", f"request {i}", {"action": "a"}, "{}", score, ms, ttft_ms=ms / 2, prefill_ms=5.0,
                         decode_ms=ms / 2, decode_tokens=10, output_tokens=10, failed=failed, server_ms=server_ms,
                         thinking_ttft_ms=3.0 if thinking else None, thinking_ms=9.0 if thinking else None,
                         thinking_tokens=thinking)


RECORDS = [record(0), record(1, right=0.5, ms=300.0), record(2, valid=False, right=0.0, ms=200.0),
           record(3, failed=True, right=0.0)]


def test_every_metric_a_trial_records_is_declared():
    full = [record(i, server_ms=80.0, thinking=4) for i in range(3)] + [record(3, failed=True)]
    full = [replace(r, cache_ms=0.1, prompt_tokens_engine=100, prompt_tokens_evaluated=40) for r in full]
    full += [replace(record(4), cache="exact", cache_ms=0.2)]
    metrics = summarize(full, span_s=2.0, slos={"latency_ms": 150.0}, price_per_hour=0.9,
                        resources={"memory_mb": 300.0, "kv_cache_mb": 22.5, "model_mb": 80.0})
    assert set(metrics) == set(REGISTRY) | {f"{FIELD_METRIC}/action"}
    groups = {m.group for m in REGISTRY.values()}
    assert groups == {"trial", "label", "server", "prefix", "thinking", "cache", "load", "memory", "cost",
                      "breakdown"}
    # a trial without a label, server timings, thinking or a measured span has only the trial group, and where its
    # time went (the engine's prefill and decode times)
    bare = summarize([record(0, label=None)])
    assert set(bare) == ({n for n, m in REGISTRY.items() if m.group in ("trial", "breakdown")}
                         | {f"{FIELD_METRIC}/action"})


def test_declared_values_are_the_arithmetic_of_their_definitions():
    m = summarize(RECORDS, model_loads=2, model_load_ms=30.0, span_s=4.0, slos={"latency_ms": 250.0})
    assert m["schema_valid_rate"] == 3 / 4 and m["field_accuracy"] == (1 + 0.5 + 0 + 0) / 4
    assert m["exact_match_rate"] == 1 / 4 and m["failed_requests"] == 1 and m["requests_measured"] == 4
    assert m["latency_p50_ms"] == 200.0 and m["latency_mean_ms"] == 200.0  # the failed request has no latency
    assert m["decode_tokens_per_s"] == 30 / 0.3 and m["model_loads"] == 2 and m["model_load_ms"] == 30.0
    assert m["throughput_rps"] == 3 / 4 and m["goodput_rps"] == 2 / 4 and m["output_tokens_per_s"] == 30 / 4


def test_the_cache_metrics_count_hits_over_every_request():
    # two misses that paid 0.1 ms for their lookup and one hit of 0.3 ms: what a trial with `cache: exact` records
    misses = [replace(record(i, ms=100.0 + i), cache_ms=0.1) for i in range(2)]
    hit = replace(record(2, ms=0.3), cache="exact", cache_ms=0.3)
    m = summarize([*misses, hit])
    assert m["cache_hit_rate"] == 1 / 3 and m["engine_requests_saved"] == 1
    assert m["cache_hit_ms_p50"] == 0.3 and m["cache_ms_mean"] == pytest.approx(0.5 / 3)
    assert m["latency_p50_ms"] == 100.0  # the hit is among the latencies: what the traffic was served
    assert "cache_hit_rate" not in summarize(RECORDS)  # without a cache, no cache metric at all


def test_the_prompt_share_from_the_kv_cache_is_over_the_requests_whose_engine_said():
    # 100 prompt tokens of which 40 evaluated (60 reused), then 50 of which all evaluated; a request whose engine
    # did not say (Ollama) and a failed one count for nothing
    said = [replace(record(0), prompt_tokens_engine=100, prompt_tokens_evaluated=40),
            replace(record(1), prompt_tokens_engine=50, prompt_tokens_evaluated=50),
            replace(record(2), prompt_tokens_engine=80), replace(record(3, failed=True), prompt_tokens_engine=70,
                                                                 prompt_tokens_evaluated=0)]
    assert summarize(said)["prompt_cached_share"] == 60 / 150
    assert "prompt_cached_share" not in summarize(said[2:3])


def test_reported_intervals_are_the_declared_ones():
    # through a cache, one of them a false hit: every declared interval; without one, none of the cache's
    cached = ([replace(r, cache_ms=0.1, false_hit=False) for r in RECORDS]
              + [replace(record(4), cache="semantic", false_hit=True)])
    names = {k.removesuffix("_ci95_low") for k in reported_intervals(cached) if k.endswith("_ci95_low")}
    assert names == set(ci_metrics()) == {n for n, m in REGISTRY.items() if m.reported_interval}
    plain = {k.removesuffix("_ci95_low") for k in reported_intervals(RECORDS) if k.endswith("_ci95_low")}
    assert plain == names - {n for n, m in REGISTRY.items() if m.group == "cache"}
    low, high = (reported_intervals(cached)[f"false_hit_rate_ci95_{end}"] for end in ("low", "high"))
    assert (low, high) == pytest.approx(wilson(1, len(cached), 0.05))  # every request could have been false
    # an exact cache serves no other request's answer: none at risk, a false-hit rate of exactly 0
    exact = [replace(r, cache_ms=0.1, cache="exact") for r in RECORDS]
    assert [reported_intervals(exact)[f"false_hit_rate_ci95_{end}"] for end in ("low", "high")] == [0, 0]
    # one request of four at risk and not false: Wilson's upper end over it, scaled by its share
    mixed = [*exact[:3], replace(exact[3], cache="", false_hit=False)]
    assert reported_intervals(mixed)["false_hit_rate_ci95_high"] == pytest.approx(wilson(0, 1, 0.05)[1] / 4)


@pytest.mark.parametrize("metric", bounded_metrics())
def test_the_bound_of_every_bounded_metric_is_the_value_with_perfect_requests_added(metric):
    perfect = RequestRecord("", "", None, "", AnswerScore(True, True, True, 1.0, True), 0.0, ttft_ms=0.0)
    expected = summarize(RECORDS + [perfect] * 3)[metric]
    assert optimistic_bound(RECORDS, 7, metric) == pytest.approx(expected, nan_ok=True)


def test_interval_kinds_follow_the_declarations():
    assert interval(RECORDS, "schema_valid_rate", 0.05)[1] < 1.0  # Wilson: 3 of 4
    low, high = interval(RECORDS, "latency_p95_ms", 0.05)
    assert 100.0 <= low <= high <= 300.0
    assert interval(RECORDS, "prefill_ms_mean", 0.05) == (float("-inf"), float("inf"))  # no kind: never decides
    assert per_request(RECORDS, "latency_p95_ms") is None  # a failed request has no latency to pair
    assert lookup("field_accuracy./params/title").direction == "maximize" and lookup("nonsense") is None


def test_a_new_metric_is_one_declaration(monkeypatch, tmp_path, write_config):
    """One ``Metric`` added to the registry is summarised, has its interval, bounds early abort, is accepted by
    the config as an objective and a constraint, is recorded by every trial of a study and shown in its tables."""
    bare = Metric("bare_json_rate", "maximize", "share",  # answers that are the JSON alone, no prose around it
                   lambda t: sum(r.answer.startswith("{") for r in t.records) / len(t.records),
                   request=lambda r: float(r.answer.startswith("{")), statistic=lambda x, axis: np.mean(x, axis=axis),
                   bounded=True, interval="wilson", reported_interval=True, header="bare")
    monkeypatch.setitem(REGISTRY, bare.name, bare)
    assert summarize(RECORDS)["bare_json_rate"] == 1.0
    assert bare.name in bounded_metrics() and bare.name in ci_metrics() and bare.name not in server_metrics()
    assert {f"{bare.name}_ci95_low", f"{bare.name}_ci95_high"} <= set(reported_intervals(RECORDS))
    assert optimistic_bound(RECORDS[:1], 3, bare.name) == 1.0
    assert can_abort(Constraint(bare.name, min=0.9)) and not can_abort(Constraint(bare.name, max=0.9))

    right = answers_by_request({e.request: e.expected for e in load_experiment(EXPERIMENT).examples})

    def answer(messages, settings):  # prose around the answer without constrained decoding
        text = right(messages, settings)
        return text if settings.format == "schema" else f"Sure! Here is the JSON you asked for: {text}"

    config = write_config(smoke_config(objectives=[{"metric": "bare_json_rate"}, {"metric": "latency_p95_ms"}],
                                       constraints={"bare_json_rate": {"min": 0.9}}))
    loaded = load_config(config)
    assert loaded.objectives[0].direction == "maximize"  # the declared direction is the default
    prepared = prepare_study(loaded, tracking_uri=f"sqlite:///{tmp_path}/mlflow.db", backend=FakeBackend(answer))
    report = run_study(prepared, trials=6, console=Console(file=io.StringIO()))
    study = optuna.load_study(study_name="smoke", storage=f"sqlite:///{tmp_path}/optuna.db")
    trials = [t for t in study.trials if t.state == TrialState.COMPLETE and "same_as" not in t.user_attrs]
    assert {t.params["format"] for t in trials} == {"off", "schema"}
    for trial in trials:
        assert f"{bare.name}_ci95_low" in trial.user_attrs["metrics"]
        if trial.params["format"] == "off":  # the first long answer already breaks the limit: stopped at once
            assert trial.user_attrs["metrics"][bare.name] == 0.0 and bare.name in trial.user_attrs["aborted"]
        else:
            assert trial.user_attrs["metrics"][bare.name] == 1.0 and "aborted" not in trial.user_attrs
    console = Console(file=io.StringIO(), width=120)
    console.print(front_table(report.front, "front", settings=("format",), objectives=[bare.name]))
    assert "bare" in console.file.getvalue()


def test_feasibility_direction_and_evidence_of_a_broken_limit_each_have_one_rule():
    # a trial is feasible by Optuna's rule: every violation <= 0; NaN (a metric that could not be measured) is not
    assert feasible([0.0, -3.0]) and feasible([]) and not feasible([0.0, 0.5]) and not feasible([float("nan")])
    # a value shows a limit broken only when measured and past it (early abort, a refusal, an explanation)
    limit, floor = Constraint("latency_p95_ms", max=1000.0), Constraint("schema_valid_rate", min=0.9)
    assert limit.breaks(1001.0) and not limit.breaks(1000.0) and not limit.breaks(float("nan"))
    assert floor.breaks(0.8) and not floor.breaks(float("inf")) and not limit.breaks(float("-inf"))
    # the direction's sign: a value times it grows as it gets better
    assert Objective("field_accuracy", "maximize").sign == 1.0 and Objective("latency_p95_ms", "minimize").sign == -1.0


def test_cost_spreads_the_price_of_the_measured_span_over_what_it_served():
    # 3 completed requests, 10 output tokens each, in 12 s at 3.60 an hour: 0.012 for the span
    metrics = summarize(RECORDS, span_s=12.0, price_per_hour=3.6)
    assert metrics["cost_per_1k_answers"] == pytest.approx(0.012 / 3 * 1000)
    assert metrics["cost_per_1m_output_tokens"] == pytest.approx(0.012 / 30 * 1e6)
    # without a price, or without a measured span, there is no cost
    assert not {"cost_per_1k_answers", "cost_per_1m_output_tokens"} & set(summarize(RECORDS, span_s=12.0))
    assert "cost_per_1k_answers" not in summarize(RECORDS, price_per_hour=3.6)


def test_what_an_engine_reports_it_held_is_one_metric_each():
    held = {"memory_mb": 300.0, "kv_cache_mb": 22.5, "model_mb": 80.0}
    metrics = summarize(RECORDS, resources=held)
    assert {k: metrics[k] for k in held} == held and REGISTRY["memory_mb"].group == "memory"
    assert not set(held) & set(summarize(RECORDS))  # an engine that cannot tell: no such metric


def test_the_bottleneck_is_named_by_its_rules_with_its_figures_and_levers():
    # record(): 100 ms, 5 ms prefill, 50 ms decode of 10 tokens: decode-bound
    metrics = summarize([record(i) for i in range(4)])
    assert metrics["prefill_share"] == 0.05 and metrics["decode_share"] == 0.5
    assert metrics["other_share"] == pytest.approx(0.45)
    found = verdict(metrics)
    assert found.kind == "decode" and found.sentence.startswith(
        "decode-bound: 50% of the time decodes 10 tokens at 200 tokens/s; the levers: fewer output tokens")
    assert verdict({**metrics, "decode_share": 0.3, "other_share": 0.3, "prefill_share": 0.4}).kind == "mixed"
    prefill = {**metrics, "decode_share": 0.1, "other_share": 0.2, "prefill_share": 0.7}
    assert verdict({**prefill, "prompt_tokens_engine": 850.0}).sentence.startswith(
        "prefill-bound: 70% of the time evaluates prompts of 850 tokens; the levers: a shorter prompt")
    assert verdict({**metrics, "decode_share": 0.1, "other_share": 0.8, "prefill_share": 0.1}).kind == "overhead"
    # more clients than slots and a long tail: requests wait for a slot
    tail = {**metrics, "latency_p50_ms": 100.0, "latency_p95_ms": 400.0}
    assert verdict(tail, concurrency=4, slots=1).sentence.startswith(
        "queue-bound: p95 is 4.0x p50 at concurrency 4 with 1 slot; the levers: more slots")
    assert verdict(tail, concurrency=4, slots=4).kind == "decode"  # a slot for each client: no queue
    # an engine without its own timings: no split, no verdict
    assert verdict(summarize([replace(record(0), prefill_ms=None, decode_ms=None)])).kind == "unknown"

