"""Scoring: answer parsing, the field-by-field comparison under each rule, and trial metrics."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from pipeline.errors import DataError
from pipeline.job.pointers import MISSING, parse_pointer
from pipeline.job.rules import Exact, Ignore, Number, RuleSet, Text, Unordered, make_rule
from pipeline.job.schemas import check_schema
from pipeline.job.scoring import AnswerScore, Scorer, parse_answer
from pipeline.measure.metrics import confidence_intervals, summarize
from pipeline.measure.records import RequestRecord
from pipeline.measure.registry import REGISTRY, ci_metrics, field_metric, metric_name
from pipeline.measure.tables import field_errors

EXPECTED = {"action": "update_task", "params": {"id": 4, "fields": {"due": "monday"}}, "success": True}
ANY_SCHEMA = check_schema({}, "test")


@pytest.fixture(scope="module")
def task_api(experiment):
    return experiment.scorer, experiment.schema


def rules(default: str = "text", **by_path) -> RuleSet:
    return RuleSet(make_rule(default, "test"), {parse_pointer(p.replace("__", "/").replace("_S_", "*")):
                                                make_rule(r, "test") for p, r in by_path.items()})


def score(scorer: Scorer, got, expected, schema=ANY_SCHEMA) -> AnswerScore:
    return scorer.score(got if isinstance(got, str) else json.dumps(got), expected, schema)


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


def test_exact_answer_scores_full_marks(task_api):
    scorer, schema = task_api
    result = score(scorer, EXPECTED, EXPECTED, schema)
    assert (result.parsed, result.schema_valid, result.exact_match, result.field_accuracy, result.label_correct) == (
        True, True, True, 1.0, True)
    assert [f.path for f in result.fields] == ["/action", "/params/id", "/params/fields/due", "/success"]


def test_strings_compare_case_and_space_insensitively_under_text(task_api):
    scorer, schema = task_api
    answer = {"action": "update_task", "params": {"id": 4, "fields": {"due": "  Monday "}}, "success": True}
    assert score(scorer, answer, EXPECTED, schema).exact_match
    # /action is `exact` in the Task API manifest: an enum value is not folded
    wrong_case = {**EXPECTED, "action": "Update_Task"}
    result = score(scorer, wrong_case, EXPECTED, schema)
    assert not result.label_correct and not result.exact_match and result.field_accuracy == pytest.approx(3 / 4)


def test_right_label_wrong_field_scores_per_field(task_api):
    scorer, schema = task_api
    answer = {"action": "update_task", "params": {"id": 5, "fields": {"due": "monday"}}, "success": True}
    result = score(scorer, answer, EXPECTED, schema)
    assert result.schema_valid and result.label_correct and not result.exact_match
    assert result.field_accuracy == pytest.approx(3 / 4)  # action, due, success right; id wrong
    assert [(f.path, f.expected, f.got) for f in result.fields if not f.correct] == [("/params/id", 4, 5)]


def test_extra_field_counts_against_field_accuracy_and_schema(task_api):
    scorer, schema = task_api
    answer = {"action": "update_task", "params": {"id": 4, "fields": {"due": "monday"}, "title": "x"},
              "success": True}
    result = score(scorer, answer, EXPECTED, schema)
    assert not result.schema_valid and "title" in result.error
    assert result.field_accuracy == pytest.approx(4 / 5)
    extra = next(f for f in result.fields if f.path == "/params/title")
    assert extra.expected is MISSING and not extra.correct


def test_answer_that_is_not_json_or_not_an_object(task_api):
    scorer, schema = task_api
    prose = scorer.score("I will update it.", EXPECTED, schema)
    assert not prose.parsed and prose.field_accuracy == 0.0 and prose.label_correct is False
    assert len(prose.fields) == 4 and all(f.got is MISSING for f in prose.fields)
    array = scorer.score("[1, 2]", EXPECTED, schema)
    assert array.parsed and not array.schema_valid and array.field_accuracy == 0.0


def test_exact_rule_keeps_json_types_apart():
    scorer = Scorer(rules("exact"))
    assert score(scorer, {"n": 1.0}, {"n": 1}).exact_match          # one JSON number
    assert not score(scorer, {"n": True}, {"n": 1}).exact_match     # a boolean is not a number
    assert not score(scorer, {"n": "1"}, {"n": 1}).exact_match
    assert not score(scorer, {"s": "Monday"}, {"s": "monday"}).exact_match


def test_text_rule_folds_case_and_space_only_for_strings():
    scorer = Scorer(rules("text"))
    assert score(scorer, {"s": " Review   CODE "}, {"s": "review code"}).exact_match
    assert not score(scorer, {"s": "review-code"}, {"s": "review code"}).exact_match
    assert not score(scorer, {"n": "4"}, {"n": 4}).exact_match


@pytest.mark.parametrize(("rule", "got", "right"), [
    ({"rule": "number", "tolerance": 0.01}, 100.009, True),
    ({"rule": "number", "tolerance": 0.01}, 100.02, False),
    ({"rule": "number", "relative": 0.05}, 104.9, True),
    ({"rule": "number", "relative": 0.05}, 105.1, False),
    ({"rule": "number"}, 100.0, True),
    ({"rule": "number", "tolerance": 1}, "100", False),  # not a number: compared exactly
])
def test_number_rule(rule, got, right):
    scorer = Scorer(RuleSet(Text(), {("total",): make_rule(rule, "test")}))
    assert score(scorer, {"total": got}, {"total": 100}).exact_match is right


def test_ignore_rule_leaves_a_path_out_of_every_score():
    scorer = Scorer(rules("exact", __summary="ignore"))
    result = score(scorer, {"category": "billing", "summary": "Customer was charged twice."}, {"category": "billing"})
    assert result.exact_match and result.field_accuracy == 1.0 and [f.path for f in result.fields] == ["/category"]


def test_rule_on_an_object_applies_below_it_unless_a_deeper_path_has_its_own():
    scorer = Scorer(RuleSet(Text(), {("vendor",): Exact(), ("vendor", "city"): Text()}))
    result = score(scorer, {"vendor": {"name": "ACME", "city": "BERLIN"}}, {"vendor": {"name": "Acme", "city": "berlin"}})
    assert [(f.path, f.correct) for f in result.fields] == [("/vendor/name", False), ("/vendor/city", True)]


ITEMS = [{"sku": "A1", "qty": 2, "price": 9.99}, {"sku": "B2", "qty": 1, "price": 5.0}, {"sku": "C3", "qty": 4,
                                                                                          "price": 1.25}]


def test_unordered_array_as_a_multiset_pairs_the_best_matching_items():
    scorer = Scorer(RuleSet(Text(), {("items",): Unordered()}))
    shuffled = [ITEMS[2], ITEMS[0], ITEMS[1]]
    result = score(scorer, {"items": shuffled}, {"items": ITEMS})
    assert result.exact_match and {f.path for f in result.fields} == {"/items/*/sku", "/items/*/qty", "/items/*/price"}
    # one item wrong in one field, one item missing: 5 of 9 fields right
    answer = [{"sku": "C3", "qty": 5, "price": 1.25}, ITEMS[0]]
    result = score(scorer, {"items": answer}, {"items": ITEMS})
    assert result.field_accuracy == pytest.approx(5 / 9)
    assert sorted((f.expected, f.got) for f in result.fields if not f.correct and f.got is not MISSING) == [(4, 5)]
    # in order, the same answer would be wrong almost everywhere
    ordered = Scorer(RuleSet(Text()))
    assert score(ordered, {"items": shuffled}, {"items": ITEMS}).field_accuracy < 0.5


def test_unordered_multiset_counts_duplicates():
    scorer = Scorer(RuleSet(Exact(), {("tags",): Unordered()}))
    assert score(scorer, {"tags": ["b", "a", "a"]}, {"tags": ["a", "a", "b"]}).exact_match
    result = score(scorer, {"tags": ["a", "b", "b"]}, {"tags": ["a", "a", "b"]})
    assert not result.exact_match and result.field_accuracy == pytest.approx(2 / 3)


def test_unordered_array_paired_by_key():
    scorer = Scorer(RuleSet(Exact(), {("items",): Unordered(key="sku"), ("items", "*", "sku"): Text()}))
    answer = [{"sku": "b2", "qty": 1, "price": 5.0}, {"sku": "a1", "qty": 3, "price": 9.99}]
    result = score(scorer, {"items": answer}, {"items": ITEMS})
    wrong = [(f.path, f.expected, f.got) for f in result.fields if not f.correct]
    # A1's qty differs; C3 is missing (three fields); items are paired by sku (case-folded by the text rule)
    assert ("/items/*/qty", 2, 3) in wrong and sum(f[2] is MISSING for f in wrong) == 3
    assert result.field_accuracy == pytest.approx(5 / 9)


def test_weights_scale_a_field_share():
    scorer = Scorer(RuleSet(Exact(), {("category",): make_rule({"rule": "exact", "weight": 3}, "test")}))
    result = score(scorer, {"category": "billing", "priority": "low"}, {"category": "billing", "priority": "high"})
    assert result.field_accuracy == pytest.approx(3 / 4)


def test_empty_containers_are_fields_of_their_own():
    scorer = Scorer(RuleSet(Text()))
    assert score(scorer, {"params": {}}, {"params": {}}).exact_match
    assert not score(scorer, {"params": {"status": "open"}}, {"params": {}}).exact_match
    missing = score(scorer, {}, {"params": {}})
    assert missing.field_accuracy == 0.0 and [f.path for f in missing.fields] == ["/params"]


def test_a_value_where_an_object_belongs_is_wrong_in_every_field_of_the_object():
    scorer = Scorer(RuleSet(Text()))
    result = score(scorer, {"vendor": "ACME"}, {"vendor": {"name": "ACME", "country": "DE"}})
    assert result.field_accuracy == 0.0 and len(result.fields) == 2


@pytest.mark.parametrize(("spec", "message"), [
    ("exakt", "unknown rule 'exakt'. Did you mean 'exact'?"),
    ({"rule": "number", "tolerence": 1}, "rule 'number' takes no 'tolerence'. Did you mean 'tolerance'?"),
    ({"rule": "number", "tolerance": -1}, "'tolerance' must be a number, 0 or more"),
    ({"rule": "text", "weight": 0}, "'weight' must be a number greater than 0"),
    ({"rule": "unordered", "key": 3}, "'key' must be the name of a member of each item"),
    (["text"], "a rule is a name"),
])
def test_bad_rules_are_named(spec, message):
    with pytest.raises(DataError, match=f"where: {message}".replace("(", r"\(").replace("?", r"\?")):
        make_rule(spec, "where")


def test_rule_registry_holds_every_rule():
    assert {type(make_rule(name, "x")) for name in ("exact", "text", "number", "unordered", "ignore")} == {
        Exact, Text, Number, Unordered, Ignore}


def _record(latency, *, valid=True, failed=False, ttft=10.0, truncated=False, label=None, fields=()):
    score = AnswerScore(not failed, valid and not failed, False, 1.0 if valid and not failed else 0.0, label,
                        tuple(fields))
    return RequestRecord("r", "q", EXPECTED, "", score, latency, ttft_ms=None if failed else ttft, prefill_ms=5.0,
                         decode_ms=20.0, decode_tokens=10, prompt_tokens_estimated=100, prompt_tokens_engine=90,
                         output_tokens=11, truncated=truncated, failed=failed)


def test_summarize_rates_and_percentiles_against_numpy():
    latencies = [100.0, 200.0, 300.0, 400.0, 1000.0]
    records = [_record(x, valid=i < 3) for i, x in enumerate(latencies)]
    records.append(_record(float("nan"), failed=True))
    metrics = summarize(records, model_loads=1, model_load_ms=250.0)
    assert metrics["schema_valid_rate"] == pytest.approx(3 / 6)  # a failed request counts as wrong
    assert metrics["field_accuracy"] == pytest.approx(3 / 6)
    assert metrics["failed_requests"] == 1
    assert metrics["latency_p50_ms"] == 300.0
    assert metrics["latency_p95_ms"] == pytest.approx(np.percentile(latencies, 95)) == pytest.approx(880.0)
    assert metrics["latency_p99_ms"] == pytest.approx(976.0)
    assert metrics["latency_mean_ms"] == pytest.approx(400.0)
    # decode throughput: 10 tokens per request over 20 ms each
    assert metrics["decode_tokens_per_s"] == pytest.approx(500.0)
    # the load is its own metric and never inside a latency statistic
    assert metrics["model_load_ms"] == 250.0 and metrics["latency_p99_ms"] < 1000.0
    assert "label_accuracy" not in metrics  # no label, no label metric


def test_summarize_label_and_per_field_accuracy(task_api):
    scorer, schema = task_api
    answers = [EXPECTED, {**EXPECTED, "params": {"id": 5, "fields": {"due": "monday"}}},
               {**EXPECTED, "action": "delete_task", "params": {"id": 4}}]
    records = [RequestRecord("r", "q", EXPECTED, json.dumps(a), score(scorer, a, EXPECTED, schema), 10.0)
               for a in answers]
    metrics = summarize(records)
    assert metrics["label_accuracy"] == pytest.approx(2 / 3)
    assert metrics[field_metric("/params/id")] == pytest.approx(2 / 3)
    assert metrics[field_metric("/params/fields/due")] == pytest.approx(2 / 3)
    assert metrics[field_metric("/success")] == 1.0
    errors = field_errors(records)
    assert list(errors.columns) == ["path", "expected", "got", "count"]
    assert errors.to_dict(orient="records")[0]["count"] == 1
    assert {"path": "/params/fields/due", "expected": '"monday"', "got": "(missing)", "count": 1} in errors.to_dict(
        orient="records")


def test_field_metric_names_are_mlflow_keys():
    from mlflow.utils.validation import _validate_metric_name

    name = field_metric("/line_items/*/unit_price")
    assert name == "field_accuracy./line_items/-/unit_price" == metric_name("field_accuracy./line_items/*/unit_price")
    _validate_metric_name(name)


def test_summarize_counts_truncated_answers():
    metrics = summarize([_record(1.0, truncated=True), _record(2.0), _record(3.0, truncated=True)])
    assert metrics["truncated_answers"] == 2


def test_summarize_with_every_request_failed_has_no_latency():
    metrics = summarize([_record(float("nan"), failed=True)])
    assert math.isnan(metrics["latency_p95_ms"]) and metrics["schema_valid_rate"] == 0.0


def test_confidence_intervals_bracket_the_measured_values():
    rng = np.random.default_rng(3)
    latencies = rng.lognormal(6, 0.4, 20)
    records = [_record(x, valid=i % 4 != 0, label=i % 3 != 0) for i, x in enumerate(latencies)]
    metrics = summarize(records)
    intervals = confidence_intervals(records)
    shown = [m for m in ci_metrics() if REGISTRY[m].group != "cache"]  # no cache served these requests
    assert set(intervals) == {f"{m}_ci95_{side}" for m in shown for side in ("low", "high")}
    for metric in shown:
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
    assert "label_accuracy_ci95_low" not in intervals  # no label


def test_confidence_interval_needs_two_requests():
    intervals = confidence_intervals([_record(100.0)])
    assert all(math.isnan(v) for v in intervals.values())
    failed = confidence_intervals([_record(float("nan"), failed=True), _record(10.0, valid=False)])
    assert math.isnan(failed["latency_p95_ms_ci95_low"]) and failed["schema_valid_rate_ci95_high"] == 0.0
