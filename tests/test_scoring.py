from __future__ import annotations

import json
import math

import numpy as np
import pytest

from pipeline.experiment import load_experiment
from pipeline.scoring import (CI_METRICS, AnswerScore, RequestRecord, confidence_intervals, parse_answer, score_answer,
                              summarize)
from tests.conftest import EXPERIMENT

EXPECTED = {"action": "update_task", "params": {"id": 4, "fields": {"due": "monday"}}, "success": True}


@pytest.fixture(scope="module")
def validator():
    return load_experiment(EXPERIMENT).validator()


@pytest.mark.parametrize("text", [
    json.dumps(EXPECTED),
    f"```json\n{json.dumps(EXPECTED)}\n```",
    f"```\n{json.dumps(EXPECTED, indent=2)}\n```",
    f"Sure! Here it is: {json.dumps(EXPECTED)} Hope that helps.",
])
def test_parse_answer_tolerates_fences_and_surrounding_text(text):
    assert parse_answer(text) == EXPECTED


@pytest.mark.parametrize("text", ["I'm ready to help with your tasks.", "{\"action\": \"create_task\", ", ""])
def test_parse_answer_rejects_text_without_json(text):
    with pytest.raises(ValueError):
        parse_answer(text)


def test_exact_answer_scores_full_marks(validator):
    score = score_answer(json.dumps(EXPECTED), EXPECTED, validator)
    assert score == AnswerScore(True, True, True, True, 1.0, True, "")


def test_strings_compare_case_and_space_insensitively(validator):
    answer = {"action": "update_task", "params": {"id": 4, "fields": {"due": "  Monday "}}, "success": True}
    assert score_answer(json.dumps(answer), EXPECTED, validator).exact_match


def test_right_action_wrong_field_scores_per_field(validator):
    answer = {"action": "update_task", "params": {"id": 5, "fields": {"due": "monday"}}, "success": True}
    score = score_answer(json.dumps(answer), EXPECTED, validator)
    assert score.schema_valid and score.action_correct
    assert not score.params_exact and not score.exact_match
    assert score.field_accuracy == pytest.approx(1 / 2)  # fields.due right, id wrong


def test_extra_field_counts_against_field_accuracy_and_schema(validator):
    answer = {"action": "update_task", "params": {"id": 4, "fields": {"due": "monday"}, "title": "x"},
              "success": True}
    score = score_answer(json.dumps(answer), EXPECTED, validator)
    assert not score.schema_valid and "title" in score.error
    assert score.field_accuracy == pytest.approx(2 / 3)


def test_valid_json_that_breaks_the_schema(validator):
    answer = {"action": "list_tasks", "params": {"title": "list_tasks"}, "success": True}
    score = score_answer(json.dumps(answer), EXPECTED, validator)
    assert score.parsed and not score.schema_valid and not score.action_correct
    assert score.field_accuracy == 0.0


def test_non_object_json_is_parsed_but_wrong(validator):
    score = score_answer("[1, 2]", EXPECTED, validator)
    assert score.parsed and not score.schema_valid and score.field_accuracy == 0.0


def _record(latency, *, valid=True, failed=False, ttft=10.0, truncated=False):
    score = AnswerScore(not failed, valid and not failed, valid, False, 1.0 if valid else 0.0, False)
    return RequestRecord("r", "q", EXPECTED, "", score, latency, None if failed else ttft, 5.0, 20.0, 10, 100, 90,
                         11, truncated, failed=failed)


def test_summarize_rates_and_percentiles_against_numpy():
    latencies = [100.0, 200.0, 300.0, 400.0, 1000.0]
    records = [_record(x, valid=i < 3) for i, x in enumerate(latencies)]
    records.append(_record(float("nan"), failed=True))
    metrics = summarize(records, model_loads=1, model_load_ms=250.0)
    assert metrics["schema_valid_rate"] == pytest.approx(3 / 6)  # a failed request counts as wrong
    assert metrics["failed_requests"] == 1
    assert metrics["latency_p50_ms"] == 300.0
    assert metrics["latency_p95_ms"] == pytest.approx(np.percentile(latencies, 95)) == pytest.approx(880.0)
    assert metrics["latency_p99_ms"] == pytest.approx(976.0)
    assert metrics["latency_mean_ms"] == pytest.approx(400.0)
    # decode throughput: 10 tokens per request over 20 ms each
    assert metrics["decode_tokens_per_s"] == pytest.approx(500.0)
    # the load is its own metric and never inside a latency statistic
    assert metrics["model_load_ms"] == 250.0 and metrics["latency_p99_ms"] < 1000.0


def test_summarize_counts_truncated_answers():
    metrics = summarize([_record(1.0, truncated=True), _record(2.0), _record(3.0, truncated=True)])
    assert metrics["truncated_answers"] == 2


def test_summarize_with_every_request_failed_has_no_latency():
    metrics = summarize([_record(float("nan"), failed=True)])
    assert math.isnan(metrics["latency_p95_ms"]) and metrics["schema_valid_rate"] == 0.0


def test_confidence_intervals_bracket_the_measured_values():
    rng = np.random.default_rng(3)
    latencies = rng.lognormal(6, 0.4, 20)
    records = [_record(x, valid=i % 4 != 0) for i, x in enumerate(latencies)]
    metrics = summarize(records)
    intervals = confidence_intervals(records)
    assert set(intervals) == {f"{m}_ci95_{side}" for m in CI_METRICS for side in ("low", "high")}
    for metric in CI_METRICS:
        low, high = intervals[f"{metric}_ci95_low"], intervals[f"{metric}_ci95_high"]
        assert low <= metrics[metric] <= high
        assert low < high or metric == "exact_match_rate"  # no exact match in these records: [0, 0]
    # a rate's interval stays inside [0, 1]; a p95's inside the observed range
    assert 0 <= intervals["schema_valid_rate_ci95_low"] and intervals["schema_valid_rate_ci95_high"] <= 1
    assert latencies.min() <= intervals["latency_p95_ms_ci95_low"]
    assert intervals["latency_p95_ms_ci95_high"] <= latencies.max()
    assert confidence_intervals(records) == intervals  # seeded: the same records give the same interval


def test_confidence_interval_of_a_constant_rate_is_that_rate():
    intervals = confidence_intervals([_record(100.0 + i) for i in range(10)])
    assert intervals["schema_valid_rate_ci95_low"] == intervals["schema_valid_rate_ci95_high"] == 1.0


def test_confidence_interval_needs_two_requests():
    intervals = confidence_intervals([_record(100.0)])
    assert all(math.isnan(v) for v in intervals.values())
    failed = confidence_intervals([_record(float("nan"), failed=True), _record(10.0, valid=False)])
    assert math.isnan(failed["latency_p95_ms_ci95_low"]) and failed["schema_valid_rate_ci95_high"] == 0.0
