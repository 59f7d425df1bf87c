"""The metric registry: every metric a trial records is declared once, and a new declaration is all it takes for
a metric to be summarised, accepted by the config and shown in tables."""

from __future__ import annotations

import io

import pandas as pd
import pytest
from rich.console import Console

from pipeline.job.scoring import AnswerScore, FieldResult
from pipeline.measure.intervals import interval, per_request, reported_intervals
from pipeline.measure.metrics import optimistic_bound, summarize
from pipeline.measure.records import RequestRecord
from pipeline.measure.registry import BOUNDED_METRICS, CI_METRICS, FIELD_METRIC, REGISTRY, Metric, lookup
from pipeline.render.tables import front_table
from pipeline.search.config import load_config
from tests.conftest import smoke_config


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
    metrics = summarize(full, span_s=2.0, slos={"latency_ms": 150.0})
    assert set(metrics) == set(REGISTRY) | {f"{FIELD_METRIC}/action"}
    groups = {m.group for m in REGISTRY.values()}
    assert groups == {"trial", "label", "server", "thinking", "load"}
    # a trial without a label, server timings, thinking or a measured span has only the trial group
    bare = summarize([record(0, label=None)])
    assert set(bare) == {n for n, m in REGISTRY.items() if m.group == "trial"} | {f"{FIELD_METRIC}/action"}


def test_declared_values_are_the_arithmetic_of_their_definitions():
    m = summarize(RECORDS, model_loads=2, model_load_ms=30.0, span_s=4.0, slos={"latency_ms": 250.0})
    assert m["schema_valid_rate"] == 3 / 4 and m["field_accuracy"] == (1 + 0.5 + 0 + 0) / 4
    assert m["exact_match_rate"] == 1 / 4 and m["failed_requests"] == 1 and m["requests_measured"] == 4
    assert m["latency_p50_ms"] == 200.0 and m["latency_mean_ms"] == 200.0  # the failed request has no latency
    assert m["decode_tokens_per_s"] == 30 / 0.3 and m["model_loads"] == 2 and m["model_load_ms"] == 30.0
    assert m["throughput_rps"] == 3 / 4 and m["goodput_rps"] == 2 / 4 and m["output_tokens_per_s"] == 30 / 4


def test_reported_intervals_are_the_declared_ones():
    names = {k.removesuffix("_ci95_low") for k in reported_intervals(RECORDS) if k.endswith("_ci95_low")}
    assert names == set(CI_METRICS) == {n for n, m in REGISTRY.items() if m.reported_interval}


@pytest.mark.parametrize("metric", BOUNDED_METRICS)
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


def test_a_new_metric_is_one_declaration(monkeypatch, write_config):
    chars = Metric("answer_chars_mean", "minimize", "characters",
                   lambda t: sum(len(r.answer) for r in t.done) / len(t.done), header="chars")
    monkeypatch.setitem(REGISTRY, chars.name, chars)
    assert summarize(RECORDS)["answer_chars_mean"] == 2.0
    config = load_config(write_config(smoke_config(objectives=[{"metric": "answer_chars_mean"},
                                                               {"metric": "latency_p95_ms"}])))
    assert config.objectives[0].direction == "minimize"  # the declared direction is the default
    front = pd.DataFrame([{"number": 0, "num_ctx": 1024, "answer_chars_mean": 2.0, "latency_p95_ms": 300.0,
                           "pareto": True, "baseline": False}])
    console = Console(file=io.StringIO(), width=120)
    console.print(front_table(front, "front", settings=("num_ctx",), objectives=["answer_chars_mean"]))
    assert "chars" in console.file.getvalue()
