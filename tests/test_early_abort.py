"""The early-abort rule: a trial stops only when no outcome of its remaining requests could meet a constraint."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.job.scoring import AnswerScore
from pipeline.measure.metrics import optimistic_bound, summarize
from pipeline.measure.records import RequestRecord
from pipeline.measure.registry import Constraint
from pipeline.measure.runner import Abort, abort_reason, can_abort

P95_SLA = Constraint("latency_p95_ms", max=4000.0)
VALID_SLA = Constraint("schema_valid_rate", min=0.8)


def record(latency: float, *, valid: bool = True, failed: bool = False, fields: float = 1.0,
           label: bool = True) -> RequestRecord:
    valid = valid and not failed  # as the runner records a failed request
    score = AnswerScore(valid, valid, valid and fields == 1.0, fields if valid else 0.0, label and valid)
    return RequestRecord("r", "q", {}, "", score, float("nan") if failed else latency, ttft_ms=1.0, prefill_ms=1.0,
                         decode_ms=1.0, decode_tokens=1, prompt_tokens_estimated=10, prompt_tokens_engine=10,
                         output_tokens=1, failed=failed)


def test_p95_bound_by_hand():
    # 20 requests: p95 sits at position 0.95 * 19 = 18.05 of the sorted latencies (numpy's linear rule).
    # One slow request with 19 perfect ones: 0 + 0.05 * (5000 - 0) = 250 ms, still within 4000.
    assert optimistic_bound([record(5000)], 20, "latency_p95_ms") == pytest.approx(250.0)
    assert abort_reason([record(5000)], 20, (P95_SLA,)) is None
    # Two slow requests fill positions 18 and 19: p95 is at least 5000 whatever the other 18 take.
    assert optimistic_bound([record(5000), record(5000)], 20, "latency_p95_ms") == pytest.approx(5000.0)
    abort = abort_reason([record(100), record(5000), record(5000)], 20, (P95_SLA,))
    assert abort == Abort(P95_SLA, pytest.approx(5000.0), 3, 20)
    assert abort.describe() == ("stopped after 3 of 20 requests: latency_p95_ms <= 4000 cannot be met "
                                "(latency_p95_ms can at best reach 5000)")


def test_rate_bound_by_hand():
    # schema_valid_rate >= 0.8 over 20 requests allows 4 invalid answers; the 5th ends the trial.
    four = [record(10, valid=False)] * 4
    assert optimistic_bound(four, 20, "schema_valid_rate") == pytest.approx(16 / 20)
    assert abort_reason(four, 20, (VALID_SLA,)) is None
    assert abort_reason(four + [record(10, valid=False)], 20, (VALID_SLA,)).bound == pytest.approx(15 / 20)
    # a failed request counts as wrong, as in the trial's metrics
    assert abort_reason(four + [record(0, failed=True)], 20, (VALID_SLA,)) is not None


def test_a_finished_trial_is_never_aborted():
    records = [record(9000)] * 20
    assert abort_reason(records, 20, (P95_SLA,)) is None


@pytest.mark.parametrize(("constraint", "expected"), [
    (Constraint("latency_p95_ms", max=1000.0), True),
    (Constraint("ttft_p50_ms", max=100.0), True),
    (Constraint("schema_valid_rate", min=0.5), True),
    (Constraint("failed_requests", max=0.0), True),
    (Constraint("latency_p95_ms", min=10.0), False),       # a faster request can only lower it
    (Constraint("schema_valid_rate", max=0.5), False),
    (Constraint("decode_tokens_per_s", min=50.0), False),  # not monotone in each request
    (Constraint("prompt_tokens_engine", max=500.0), False),
])
def test_which_constraints_can_stop_a_trial(constraint, expected):
    assert can_abort(constraint) is expected


def test_constraints_that_cannot_be_bounded_never_stop_a_trial():
    assert abort_reason([record(9000)] * 5, 20, (Constraint("decode_tokens_per_s", min=1e9),)) is None
    with pytest.raises(ValueError, match="no optimistic bound"):
        optimistic_bound([record(1)], 2, "decode_tokens_per_s")


requests = st.lists(st.tuples(st.floats(0, 10_000), st.booleans(), st.booleans(), st.floats(0, 1), st.booleans()),
                    min_size=1, max_size=30)
RATES = ("schema_valid_rate", "field_accuracy", "label_accuracy", "exact_match_rate")


@settings(max_examples=300, derandomize=True, deadline=None)
@given(requests, st.floats(1, 10_000), st.floats(0.05, 1.0), st.sampled_from([50, 95, 99]), st.sampled_from(RATES))
def test_an_aborted_trial_would_have_been_infeasible(outcomes, latency_limit, rate_limit, q, rate):
    """Exactness: whenever the rule stops a trial, the whole trial breaks the same constraint."""
    records = [record(latency, valid=valid, failed=failed, fields=fields, label=label)
               for latency, valid, failed, fields, label in outcomes]
    constraints = (Constraint(f"latency_p{q}_ms", max=latency_limit), Constraint(rate, min=rate_limit))
    full = summarize(records)
    for used in range(1, len(records)):
        abort = abort_reason(records[:used], len(records), constraints)
        if abort is not None:
            assert abort.constraint.violation(full[abort.constraint.metric]) > 0
            # the bound is never worse than what the trial would have measured
            assert abort.constraint.violation(abort.bound) <= abort.constraint.violation(full[abort.constraint.metric])
            break


def test_bound_matches_numpy_with_perfect_requests_added():
    latencies = [120.0, 900.0, 450.0]
    bound = optimistic_bound([record(x) for x in latencies], 10, "latency_p99_ms")
    assert bound == pytest.approx(np.percentile(latencies + [0.0] * 7, 99))


@settings(max_examples=200, derandomize=True, deadline=None)
@given(requests, st.integers(0, 20), st.sampled_from(["latency_p50_ms", "latency_p95_ms", "latency_p99_ms",
                                                      "latency_mean_ms", "ttft_p50_ms", "ttft_p95_ms", *RATES,
                                                      "parse_rate"]))
def test_the_bound_is_summarize_over_the_records_and_perfect_ones(outcomes, more, metric):
    records = [record(latency, valid=valid, failed=failed, fields=fields, label=label)
               for latency, valid, failed, fields, label in outcomes]
    labelled = any(r.score.label_correct is not None for r in records)
    perfect = RequestRecord("", "", None, "", AnswerScore(True, True, True, 1.0, True if labelled else None), 0.0,
                            ttft_ms=0.0)
    expected = summarize(records + [perfect] * more)[metric]
    bound = optimistic_bound(records, len(records) + more, metric)
    assert bound == pytest.approx(expected, nan_ok=True)
