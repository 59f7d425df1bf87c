"""Every benchmark runs end to end in its smoke size and writes its JSON and report.

The figures of the full sizes are in BENCHMARKS.md; here only that the commands work and their results hold
together. The search and early-abort replays read the committed grid.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pandas as pd
import pytest

from tests.conftest import ROOT

pytestmark = pytest.mark.slow


def bench(tmp_path, name: str, *extra: str) -> dict:
    done = subprocess.run([sys.executable, "-m", "benchmarks", name, "--smoke", "--out", str(tmp_path), *extra],
                          cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    if name == "grid":
        return {}
    assert (tmp_path / f"{name}.md").read_text() in done.stdout
    return json.loads((tmp_path / f"{name}.json").read_text())


def test_grid_measures_settings_and_resumes(tmp_path):
    from benchmarks.common import SCORE_COLUMNS

    data = tmp_path / "grid.csv"
    done = subprocess.run([sys.executable, "-m", "benchmarks", "grid", "--smoke", "--out", str(data)], cwd=ROOT,
                          capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    rows = pd.read_csv(data)
    assert len(rows) == 4 and rows.groupby(["few_shot", "prompt_variant", "format"]).ngroups == 2
    assert set(SCORE_COLUMNS) <= set(rows.columns)
    assert (rows["wall_ms"] >= rows["latency_ms"]).all()
    again = subprocess.run([sys.executable, "-m", "benchmarks", "grid", "--smoke", "--out", str(data)], cwd=ROOT,
                           capture_output=True, text=True, timeout=900)
    assert "2 already in" in again.stderr and len(pd.read_csv(data)) == 4  # nothing measured twice


def test_committed_grid_is_complete():
    from benchmarks.common import GRID_DATA, SCORE_COLUMNS, grid_settings, load

    rows = pd.read_csv(GRID_DATA)
    settings = grid_settings(load())
    assert len(settings) == 144
    assert len(rows) == 144 * 20 and not rows["failed"].any()
    assert set(SCORE_COLUMNS) <= set(rows.columns) and "action_correct" not in rows  # the current score columns


def test_committed_full_grid_is_complete():
    from benchmarks.common import GRID_FULL_CONFIG, GRID_FULL_DATA, SCORE_COLUMNS, grid_settings, load, read_grid
    from pipeline.search.fronts import SETTINGS
    from pipeline.search.prepare import study_experiment

    config = load(GRID_FULL_CONFIG)
    rows = read_grid(GRID_FULL_DATA)
    dev = len(study_experiment(config).split("dev"))
    assert dev == 60 and len(grid_settings(config)) == 144
    assert len(rows) == 144 * dev and not rows["failed"].any()
    assert (rows.groupby(list(rows.columns.intersection(SETTINGS)))["request_id"].nunique() == dev).all()
    assert set(SCORE_COLUMNS) <= set(rows.columns)


def test_full_grid_is_the_grid_over_the_whole_dev_split():
    from benchmarks.common import GRID_FULL_CONFIG, grid_settings, load

    grid, full = load(), load(GRID_FULL_CONFIG)
    assert full.search_space == grid.search_space and grid_settings(full) == grid_settings(grid)
    assert full.evaluation.limit is None and grid.evaluation.limit == 20
    assert (full.objectives, full.constraints) == (grid.objectives, grid.constraints)


def test_search_smoke(tmp_path):
    result = bench(tmp_path, "search")
    shares = [row["mean"] for row in result["summary"]]
    assert all(0 < s <= 1 + 1e-9 for s in shares)
    assert {row["budget"] for row in result["summary"]} == {0.10, 0.15, 0.25}
    assert {row["objectives"] for row in result["summary"]} == {"field_accuracy vs p95 (default)",
                                                                "label_accuracy vs p95"}


def test_abort_smoke(tmp_path):
    result = bench(tmp_path, "abort")
    random = [row for row in result["replay"] if row["sampler"] == "random"]
    assert all(row["same_front"] == 1.0 for row in random)  # the same settings asked: the same front
    assert all(row["requests_abort"] <= row["requests_full"] for row in result["replay"])
    real = result["real"]
    assert real["abort"]["requests"] <= real["full"]["requests"]


def test_overhead_smoke(tmp_path):
    result = bench(tmp_path, "overhead")
    assert 0 < result["engine_s"] < result["wall_s"] and result["engine_calls"] >= 4
    assert result["breakdown_s"]["score answers"] > 0  # the scorer the runner calls is the one timed


def test_fidelity_smoke(tmp_path):
    result = bench(tmp_path, "fidelity")
    assert result["cold_start"]["no_load_or_warmup_in_records"] is True
    reload = result["cold_start"]["reload_mid_trial"]
    assert reload["model_loads"] == 1 and reload["model_load_ms"] >= 1500 > reload["max_latency_ms"]
    assert abs(result["outside_clock"]["fresh_median_diff"]) < 0.05


def test_adaptive_smoke(tmp_path):
    result = bench(tmp_path, "adaptive")
    assert result["trial_size"] == 20 and result["seeds"] == 2
    for row in result["summary"]:
        assert 0 <= row["fixed_share"] <= 1 + 1e-9 and 0 <= row["share_at_budget"] <= 1 + 1e-9
        assert row["requests_needed"] is None or 0 < row["requests_needed"] <= 720
    assert {row["policy"] for row in result["promoted"]} == {"knee", "sla"}
    for row in result["spending"]:  # fixed trials: none raced, every one ran its 20 requests but for early abort
        assert row["trials"] > 0 and row["raced"] == 0 and 0 < row["requests_per_trial"] <= 20
    real = result["real"]
    assert real["fixed"]["raced"] == 0 and real["fixed"]["topped_up"] == 0
    # without top-ups every request a trial sent is one it is scored on (at most 3: early abort may stop one)
    assert real["fixed"]["timed_requests"] == real["fixed"]["requests_measured"] <= 3 * real["fixed"]["trials"]
    assert real["adaptive"]["timed_requests"] <= 3 * real["adaptive"]["trials"] + \
        real["adaptive"]["evaluation"]["refine_requests"]


def test_finals_smoke(tmp_path):
    from benchmarks.finals import EXPLORE, FINALS_REQUESTS

    result = bench(tmp_path, "finals")
    assert result["seeds"] == 2 and {row["policy"] for row in result["summary"]} == {"knee", "sla"}
    without = [row for row in result["replays"] if "no finals" in row["arm"]]
    held = [row for row in result["replays"] if "+ finals" in row["arm"]]
    assert len(without) == len(held) == 4
    for row in without:
        assert row["explored"] >= EXPLORE and row["finals"] == 0 and row["decided"] is None
    for row in held:  # the finals top up within their budget; the knee's say whether its choice was decided
        assert 0 <= row["finals"] <= FINALS_REQUESTS
        assert row["decided"] in (True, False) or row["policy"] == "sla"  # sla: no point within its limit
    # the knee's finals spend requests on the 60-request split in these seeds (none is decided at 20 requests)
    assert sum(row["finals"] for row in held if row["policy"] == "knee") > 0


def test_outcome_smoke(tmp_path):
    result = bench(tmp_path, "outcome")
    (job,) = result["jobs"]
    assert job["job"] == "task_api" and job["trials"] == 2
    gains = {g["metric"]: g for g in job["gains"]}
    assert {"latency_p50_ms", "latency_p95_ms", "field_accuracy", "exact_match_rate", "label_accuracy"} <= set(gains)
    assert job["held_out_requests"] == 40 and job["floor_p95_ms"] > 0 and job["p95_over_floor"] > 0
    assert job["baseline_dev"]["latency_p95_ms"] > 0  # the study measured its baseline first


def test_serving_smoke(tmp_path):
    result = bench(tmp_path, "serving")
    assert {(r["parallel"], r["concurrency"]) for r in result["grid"]} == {(1, 1), (1, 2), (2, 1), (2, 2)}
    for row in result["grid"]:
        assert row["requests"] == 4 and row["failed"] == 0 and row["throughput_rps"] > 0
        assert row["goodput_rps"] <= row["throughput_rps"]
    # one restart per number of slots, none between concurrencies on the same server
    assert [r["restarts"] for r in result["grid"]] == [1, 0, 1, 0]
    assert [r["batch"] for r in result["batched_bench"]] == [1, 2]
    assert result["output_tokens_per_s_bound"] > 0 and result["batch_gain"] > 0
    assert result["http_overhead"]["requests"] == 3


def test_policies_smoke(tmp_path):
    result = bench(tmp_path, "policies")
    assert result["seeds"] == 2
    rows = {(row["arm"], row["band"]): row for row in result["summary"]}
    default = rows[("accuracy, margin 0.02, finals on accuracy (the default)", 0.02)]
    assert default["promoted"] == 1.0 and 0 <= default["within"] <= 1 and default["regret"] >= 0
    for replay in result["replays"]:  # judged against what that replay measured: never above its best
        assert replay["accuracy"] <= replay["best_measured_accuracy"] + 1e-12
        assert replay["within"] == (replay["accuracy"] >= replay["best_measured_accuracy"] - replay["band"])
        assert 0 <= replay["finals"] <= 160


def test_accepts_smoke(tmp_path):
    result = bench(tmp_path, "accepts")
    assert result["trials"] == 2 and result["answers"] > 0
    # an answer right against one expected answer is right with what its line accepts too, never the reverse
    assert result["exact"] >= result["exact_before"] and result["fields"] >= result["fields_before"] - 1e-12
    for trial in result["per_trial"]:
        assert trial["exact"] >= trial["exact_before"] and trial["fields"] >= trial["fields_before"] - 1e-12
    assert result["import"].startswith("10 requests (5 held out), 2 in the few-shot pool; none skipped")


def test_cache_smoke(tmp_path):
    result = bench(tmp_path, "cache")
    assert result["arrivals"] == 12 and result["distinct_requests"] < 12  # the traffic repeats itself
    assert result["engine_requests_saved"] == round(result["hit_rate"] * 12) > 0
    low, high = result["hit_rate_interval"]
    assert low <= result["hit_rate"] <= high and 0 < result["hit_ms_p50"] <= result["hit_ms_max"]
    p50 = next(g for g in result["gains"] if g["metric"] == "latency_p50_ms")
    assert p50["change"] == result["metrics"]["exact"]["latency_p50_ms"] / result["metrics"]["off"]["latency_p50_ms"]
    semantic = {row["guard"]: row for row in result["semantic"]}
    assert set(semantic) == {"on", "off"} and all(row["threshold"] == 0.9 for row in semantic.values())
    for row in semantic.values():  # every exact repeat is a hit there too
        assert result["hit_rate"] <= row["hit_rate"] and row["false_hit_low"] <= row["false_hit_rate"]
        assert row["false_hits"] <= row["semantic_hits"] and row["lookup_ms_miss"] > result["miss_lookup_ms_mean"]
    long = result["long"]  # the long traffic's first arrivals, through the exact cache and the semantic grid
    assert long["arrivals"] == 24 and [row["guard"] for row in long["semantic"]] == ["on", "off"]
    assert all(long["hit_rate"] <= row["hit_rate"] and row["false_hit_high"] < 1 for row in long["semantic"])


def test_memory_smoke(tmp_path):
    result = bench(tmp_path, "memory")
    rows = result["rows"]
    assert [(r["num_ctx"], r["cache_type"]) for r in rows] == [(512, "f16"), (1024, "f16"), (512, "q8_0")]
    for row in rows:  # computed as llama-server allocates it, and the server's peak holds it
        assert abs(row["kv_cache_mb"] - row["kv_cache_mb_logged"]) < 0.01 and row["memory_mb"] > row["kv_cache_mb"]
    assert rows[1]["kv_cache_mb"] == 2 * rows[0]["kv_cache_mb"] > rows[2]["kv_cache_mb"]


def test_diagnose_smoke(tmp_path):
    result = bench(tmp_path, "diagnose")
    (row,) = result["rows"]
    assert row["job"] == "task_api" and row["requests"] == 3 and row["cost_per_1k_answers"] > 0
    assert abs(row["prefill_share"] + row["decode_share"] + row["other_share"] - 1) < 0.01
    assert row["verdict"].startswith(row["bottleneck"]) or row["bottleneck"] in ("mixed", "unknown")
