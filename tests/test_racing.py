"""Racing and topping up: the stopping rule on constructed intervals, its error rate on generated trials, ties,
the choice of top-ups, and a study that races and refines with every request accounted for in MLflow."""

from __future__ import annotations

import io
import json
import math
import re
from pathlib import Path

import numpy as np
import optuna
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from mlflow import MlflowClient
from rich.console import Console

from pipeline.errors import ConfigError
from pipeline.job.experiment import load_experiment
from pipeline.job.scoring import AnswerScore
from pipeline.measure.metrics import summarize
from pipeline.measure.racing import (
    Racer,
    bound_metrics,
    bounds_of,
    dominated_by,
    interval,
    tied_points,
    ties,
    undecided,
)
from pipeline.measure.records import RequestRecord
from pipeline.measure.registry import Objective
from pipeline.promote.choose import choose_trial
from pipeline.promote.promotion import PromotionPolicy
from pipeline.render.tables import front_table
from pipeline.search.config import load_config
from pipeline.search.fronts import SETTINGS, front_frame, front_trials, measured_trials, superseded, trials_frame
from pipeline.search.prepare import prepare_study
from pipeline.search.reuse import reuse_measurement
from pipeline.search.snapshot import StudySnapshot
from pipeline.search.study import run_study
from pipeline.search.topup import next_top_up, resumable
from pipeline.search.trials import BASELINE, RACED, REMEASURES, REUSED, TOPS_UP
from pipeline.testing import FakeBackend, answers_by_request
from tests.conftest import EXPERIMENT, smoke_config

ACCURACY = Objective("field_accuracy", "maximize")
P95 = Objective("latency_p95_ms", "minimize")
OBJECTIVES = (ACCURACY, P95)


def record(latency: float, accuracy: float = 1.0) -> RequestRecord:
    score = AnswerScore(True, True, accuracy == 1.0, accuracy, None)
    return RequestRecord("r", "q", {}, "", score, latency, ttft_ms=1.0)


def bounds(accuracy: tuple[float, float], p95: tuple[float, float]) -> np.ndarray:
    """Intervals as racing keeps them: rows (low, high), columns (accuracy, p95)."""
    return np.array([[accuracy[0], p95[0]], [accuracy[1], p95[1]]], float)


# --- intervals -------------------------------------------------------------------------------------------------


def test_wilson_keeps_a_few_requests_honest_at_zero_and_one():
    # 0 of 8 right: the bootstrap would say [0, 0]; Wilson's 95% interval reaches 0.32 (z^2 / (n + z^2)).
    z2 = 1.959964 ** 2
    low, high = interval([record(100, 0.0)] * 8, "exact_match_rate", 0.05)
    assert low == pytest.approx(0.0, abs=1e-12) and high == pytest.approx(z2 / (8 + z2), rel=1e-4)
    low, high = interval([record(100, 1.0)] * 8, "field_accuracy", 0.05)  # every share the same: Wilson too
    assert high == pytest.approx(1.0) and low == pytest.approx(8 / (8 + z2), rel=1e-4)


def test_bootstrap_intervals_hold_the_estimate_and_narrow_with_more_requests():
    rng = np.random.default_rng(0)
    latencies = rng.lognormal(6, 0.3, 60)
    few = [record(x, a) for x, a in zip(latencies[:8], rng.uniform(0, 1, 8))]
    many = [record(x, a) for x, a in zip(latencies, rng.uniform(0, 1, 60))]
    for records in (few, many):
        metrics = summarize(records)
        for metric in ("latency_p95_ms", "field_accuracy", "latency_p50_ms"):
            low, high = interval(records, metric, 0.05)
            assert low <= metrics[metric] <= high
    width = [np.diff(interval(r, "latency_p50_ms", 0.05))[0] for r in (few, many)]
    assert width[1] < width[0]
    # a looser error rate gives a narrower interval
    assert np.diff(interval(many, "field_accuracy", 0.3))[0] < np.diff(interval(many, "field_accuracy", 0.05))[0]


def test_metrics_without_a_rule_and_single_requests_are_unbounded():
    assert interval([record(1)] * 9, "throughput_rps", 0.05) == (-math.inf, math.inf)
    assert interval([record(1)], "latency_p95_ms", 0.05) == (-math.inf, math.inf)
    recorded = bound_metrics([record(1), record(2)], OBJECTIVES, 0.05)
    assert set(recorded) == {"field_accuracy_bound_low", "field_accuracy_bound_high", "latency_p95_ms_bound_low",
                             "latency_p95_ms_bound_high"}


# --- the stopping rule on constructed intervals ----------------------------------------------------------------


def test_dominated_only_when_the_rivals_worst_beats_our_best_on_every_objective():
    rival = (3, bounds((0.6, 0.8), (900, 1100)))
    # our best: accuracy 0.5, p95 1200 -> behind on both, even with luck: dominated
    assert dominated_by(bounds((0.2, 0.5), (1200, 2000)), [rival], OBJECTIVES) == 3
    # our accuracy could still reach 0.65, above the rival's worst 0.6: not dominated
    assert dominated_by(bounds((0.2, 0.65), (1200, 2000)), [rival], OBJECTIVES) is None
    # our p95 could be 1000, below the rival's worst 1100: not dominated
    assert dominated_by(bounds((0.2, 0.5), (1000, 2000)), [rival], OBJECTIVES) is None
    # touching on one objective and behind on the other is dominated (no worse everywhere, worse somewhere)
    assert dominated_by(bounds((0.2, 0.6), (1200, 2000)), [rival], OBJECTIVES) == 3
    # an unbounded objective never decides
    assert dominated_by(bounds((0.2, 0.5), (-math.inf, math.inf)), [rival], OBJECTIVES) is None


def requests_of(latencies, accuracies) -> list[RequestRecord]:
    """Records of requests r0, r1, ... (the same ids in every trial: the requests every trial of a study takes)."""
    return [RequestRecord(f"r{i}", "q", {}, "", AnswerScore(True, True, a == 1.0, float(a), None), float(x),
                          ttft_ms=1.0) for i, (x, a) in enumerate(zip(latencies, accuracies))]


def test_the_racer_compares_on_the_same_requests_only_at_its_stages():
    rng = np.random.default_rng(0)
    hard = rng.uniform(0, 1, 20)                         # how hard each request is, for every setting
    slow = rng.lognormal(6.5, 0.6, 20)                   # how long each request takes, for every setting
    good = requests_of(slow, np.clip(1.2 - hard, 0, 1))
    worse = requests_of(slow * 1.3, np.clip(0.9 - hard, 0, 1))   # every request slower and less accurate
    racer = Racer([(0, good)], OBJECTIVES, 0.05, stages=(4,))
    assert racer.check(worse[:3], 20) is None            # not a stage
    race = racer.check(worse[:4], 20)
    assert race is not None and race.by == 0 and race.requests == 4 and race.planned == 20
    assert race.describe().startswith("stopped after 4 of 20 requests: trial 0 dominates it at error rate 0.05 (its "
                                      "field_accuracy higher by ")
    assert "on the same requests; latency_p95_ms lower by " in race.describe()
    assert Racer([(0, good)], OBJECTIVES, 0.05, stages=(4,)).check(worse[:4], 4) is None   # nothing left to save
    assert Racer([], OBJECTIVES, 0.05, stages=(4,)).check(worse[:4], 20) is None          # no front yet
    # independent intervals on 4 requests could not tell: the request-to-request spread is wider than the gap
    ours = np.array([interval(worse[:4], o.metric, 0.05) for o in OBJECTIVES]).T
    theirs = np.array([interval(good, o.metric, 0.05) for o in OBJECTIVES]).T
    assert dominated_by(ours, [(0, theirs)], OBJECTIVES) is None
    # no worse on one objective on every request: never stopped, however much worse on the other
    faster = requests_of(slow * 0.5, np.zeros(20))
    assert Racer([(0, good)], OBJECTIVES, 0.05, stages=(4, 8, 12)).check(faster[:8], 20) is None


requests_pairs = st.lists(st.tuples(st.floats(1, 5000), st.floats(0, 1), st.floats(1, 5000), st.floats(0, 1)),
                          min_size=2, max_size=12)


@settings(max_examples=300, derandomize=True, deadline=None)
@given(pairs=requests_pairs, faster_by=st.floats(0.01, 0.9), better_by=st.floats(0.01, 1))
def test_never_stops_a_trial_better_than_the_front_point_on_some_objective(pairs, faster_by, better_by):
    """Generated pairs of trials on the same requests: a trial better than the front point on one objective on
    every request (however much worse on the other) is not dominated, and no resample can show the front point
    better there: it is never stopped. Where the rule does stop, it is what the paired gaps say."""
    front = requests_of([p[2] for p in pairs], [0.9 * p[3] for p in pairs])
    faster = requests_of([p[2] * (1 - faster_by) for p in pairs], [p[1] for p in pairs])
    better = requests_of([p[0] for p in pairs], [0.9 * p[3] + 0.1 * better_by for p in pairs])
    racer = Racer([(0, front)], OBJECTIVES, 0.05, stages=(len(pairs),))
    for trial in (faster, better):
        assert racer.check(trial, len(pairs) + 1) is None
    anyone = requests_of([p[0] for p in pairs], [p[1] for p in pairs])
    race = racer.check(anyone, len(pairs) + 1)
    expected = (0, len(pairs), len(pairs) + 1) if reference_stops(anyone, front, 0.05) else None
    assert (None if race is None else (race.by, race.requests, race.planned)) == expected


def reference_stops(ours: list[RequestRecord], theirs: list[RequestRecord], alpha: float) -> bool:
    """The racing rule written out from its description: resample the requests together (1000 draws of the
    request indices, seed 0), take each objective's gap (theirs better: positive) on every draw, and stop when the
    front point is better on one objective (the gap's alpha/2 quantile above 0) and no worse on any (above 0, or
    no gap on any draw)."""
    n = len(ours)
    picks = np.random.default_rng(0).integers(0, n, (1000, n))
    accuracy = (np.array([r.score.field_accuracy for r in ours]), np.array([r.score.field_accuracy for r in theirs]))
    latency = (np.array([r.latency_ms for r in ours]), np.array([r.latency_ms for r in theirs]))
    gaps = [accuracy[1][picks].mean(axis=1) - accuracy[0][picks].mean(axis=1),
            np.percentile(latency[0][picks], 95, axis=1) - np.percentile(latency[1][picks], 95, axis=1)]
    lows = [np.quantile(gap, alpha / 2) for gap in gaps]
    highs = [np.quantile(gap, 1 - alpha / 2) for gap in gaps]
    better = [low > 0 for low in lows]
    same = [low == high == 0 for low, high in zip(lows, highs)]
    return all(b or s for b, s in zip(better, same)) and any(better)


@pytest.mark.parametrize("alpha", [0.05, 0.2])
def test_a_trial_as_good_as_the_front_point_is_stopped_at_most_at_the_error_rate(alpha):
    """Generated trials: the front point measured on 20 requests and a rival drawn from the same distributions
    (a tie: not dominated), both on the same requests (shared difficulty and length); the rival is checked after
    4, 8, 12 and 16. The rule may stop it only when the draws fool the paired intervals."""
    rng = np.random.default_rng(1)
    stopped, runs = 0, 300
    for _ in range(runs):
        hard, slow = rng.uniform(0, 1, 20), rng.lognormal(6.5, 0.5, 20)

        def draw() -> list[RequestRecord]:
            correct = rng.uniform(0, 1, 20) > hard
            return requests_of(slow * rng.lognormal(0, 0.2, 20), correct * rng.uniform(0.5, 1, 20))

        front, rival = draw(), draw()
        racer = Racer([(0, front)], OBJECTIVES, alpha, stages=(4, 8, 12, 16))
        stopped += any(racer.check(rival[:n], 20) is not None for n in (4, 8, 12, 16))
    assert stopped / runs <= alpha


# --- ties, top-ups, resuming -----------------------------------------------------------------------------------


def test_ties_are_points_whose_intervals_overlap_on_every_objective():
    points = {1: bounds((0.4, 0.6), (900, 1000)), 2: bounds((0.5, 0.7), (950, 1200)),
              3: bounds((0.65, 0.8), (980, 1300)), 4: bounds((0.1, 0.2), (100, 200))}
    assert ties(points) == {1: [2], 2: [1, 3], 3: [2], 4: []}
    assert undecided(points) == {1: 2 + 1 + 0, 2: 2 + 2 + 0, 3: 1 + 2 + 0, 4: 0}


def test_ties_are_judged_paired_on_shared_requests_and_unpaired_only_without_them():
    # every request's latency differs widely, so each point's own interval is wide; on every request trial 1
    # answers 5% faster than trial 0, with the same answers: paired, the latency difference is decided
    slow = np.linspace(200, 2000, 40)
    records = {0: requests_of(slow, np.ones(40)), 1: requests_of(slow * 0.95, np.ones(40)),
               2: requests_of(slow, np.ones(40))}
    points = {n: bounds_of({**summarize(r), **bound_metrics(r, OBJECTIVES, 0.05)}, OBJECTIVES)
              for n, r in records.items()}
    assert ties(points) == {0: [1, 2], 1: [0, 2], 2: [0, 1]}            # the intervals overlap everywhere
    paired = tied_points(points, records, OBJECTIVES, 0.05)
    assert paired.of == {0: [2], 1: [], 2: [0]} and (paired.paired, paired.unpaired) == (3, 0)
    assert paired.how.startswith("paired")
    # without records (or fewer than two shared requests) a pair falls back to its intervals, and says so
    alone = tied_points(points, {0: records[0], 1: records[1][:1], 2: None}, OBJECTIVES, 0.05)
    assert alone.of == ties(points) and (alone.paired, alone.unpaired) == (0, 3)
    assert alone.how.startswith("unpaired")
    mixed = tied_points(points, {0: records[0], 1: records[1], 2: None}, OBJECTIVES, 0.05)
    assert mixed.of == {0: [2], 1: [2], 2: [0, 1]} and "2 without shared requests" in mixed.how


def _study(points: dict[int, tuple[np.ndarray, int]], attrs: dict[int, dict] | None = None) -> optuna.Study:
    """A study of completed two-objective trials from intervals and request counts (params x = number)."""
    study = optuna.create_study(directions=["maximize", "minimize"])
    distribution = optuna.distributions.IntDistribution(0, 100)
    for number, (b, requests) in sorted(points.items()):
        values = [float(b[:, 0].mean()), float(b[:, 1].mean())]
        metrics = {"field_accuracy": values[0], "latency_p95_ms": values[1], "requests_measured": requests,
                   "field_accuracy_bound_low": b[0][0], "field_accuracy_bound_high": b[1][0],
                   "latency_p95_ms_bound_low": b[0][1], "latency_p95_ms_bound_high": b[1][1]}
        study.add_trial(optuna.trial.create_trial(values=values, params={"x": number},
                                                  distributions={"x": distribution},
                                                  user_attrs={"metrics": metrics, **(attrs or {}).get(number, {})},
                                                  constraints={"context_fit": 0.0}))
    return study


def test_top_ups_go_to_the_least_measured_open_point_doubling_within_budget_and_split():
    study = _study({0: (bounds((0.5, 0.7), (900, 1100)), 20), 1: (bounds((0.55, 0.8), (1000, 1300)), 8),
                    2: (bounds((0.0, 0.1), (3000, 4000)), 8)})       # 2: dominated at the error rate: never
    choice = next_top_up(study, OBJECTIVES, budget=100, most=60)
    assert choice.trial.number == 1 and choice.requests == 8
    assert next_top_up(study, OBJECTIVES, budget=5, most=60).requests == 5
    assert next_top_up(study, OBJECTIVES, budget=0, most=60) is None
    # a split of 10: trial 0 (20 requests) has used it up; trial 1 (8) is still open with trial 0 on both
    # objectives, so it is topped up, by what is left of the split (10 - 8), not doubled
    capped = next_top_up(study, OBJECTIVES, budget=100, most=10)
    assert capped is not None and (capped.trial.number, capped.requests) == (1, 2)
    # a split of 8: every open point has used it up
    assert next_top_up(study, OBJECTIVES, budget=100, most=8) is None
    decided = _study({0: (bounds((0.5, 0.7), (900, 1000)), 20), 1: (bounds((0.75, 0.8), (1100, 1300)), 8)})
    assert next_top_up(decided, OBJECTIVES, budget=100, most=60) is None


def test_a_superseded_trial_leaves_the_front_and_the_table():
    study = _study({0: (bounds((0.5, 0.7), (900, 1100)), 20), 1: (bounds((0.9, 1.0), (100, 200)), 8),
                    2: (bounds((0.4, 0.5), (950, 1000)), 16)}, {2: {TOPS_UP: 1}})
    assert superseded(study) == {1}
    assert [t.number for t in measured_trials(study)] == [0, 2]
    assert [t.number for t in front_trials(study)] == [0, 2]
    frame = trials_frame(study, OBJECTIVES)
    assert list(frame["number"]) == [0, 2] and frame.loc[frame["number"] == 2, "tops_up"].item() == 1


def test_a_raced_trial_is_resumed_only_once_nothing_dominates_it():
    raced = {RACED: "stopped after 8 of 20 requests: trial 0 dominates it"}
    slow = np.linspace(500, 900, 20)
    records = {0: requests_of(slow * 0.5, np.ones(20)), 1: requests_of(slow[:8], np.zeros(8)),
               2: requests_of(slow * 2, np.zeros(20))}
    study = _study({0: (bounds((0.8, 0.9), (100, 200)), 20), 1: (bounds((0.1, 0.5), (900, 1500)), 8)}, {1: raced})

    def get(trial):
        return records[trial.number]

    assert not resumable(study, study.trials[1], OBJECTIVES, get, 0.05)
    # the front moved: trial 0 was measured again (trial 2) and is no better than the raced trial any more
    moved = _study({0: (bounds((0.8, 0.9), (100, 200)), 20), 1: (bounds((0.1, 0.5), (900, 1500)), 8),
                    2: (bounds((0.0, 0.05), (1800, 2000)), 20)}, {1: raced, 2: {REMEASURES: 0}})
    assert resumable(moved, moved.trials[1], OBJECTIVES, get, 0.05)
    moved.enqueue_trial({"x": 1})
    trial = moved.ask()
    trial.suggest_int("x", 0, 100)
    assert not reuse_measurement(moved, trial, resume=lambda t: resumable(moved, t, OBJECTIVES, get, 0.05))
    still = _study({0: (bounds((0.8, 0.9), (100, 200)), 20), 1: (bounds((0.1, 0.5), (900, 1500)), 8)}, {1: raced})
    still.enqueue_trial({"x": 1})
    again = still.ask()
    again.suggest_int("x", 0, 100)
    assert reuse_measurement(still, again, resume=lambda t: resumable(still, t, OBJECTIVES, get, 0.05))
    assert again.user_attrs[REUSED] == 1


def test_the_front_table_marks_ties_and_promote_takes_the_preferred_of_them():
    study = _study({0: (bounds((0.5, 0.7), (900, 1100)), 20), 1: (bounds((0.55, 0.75), (950, 1150)), 20),
                    2: (bounds((0.1, 0.2), (100, 200)), 20)})
    frame = trials_frame(study, OBJECTIVES)
    assert dict(zip(frame["number"], frame["tied_with"])) == {0: "1", 1: "0", 2: ""}
    console = Console(file=io.StringIO(), width=200)
    console.print(front_table(front_frame(frame, OBJECTIVES), "front", settings=SETTINGS,
                              objectives=["field_accuracy"],
                              trials=frame))
    text = " ".join(console.file.getvalue().split())
    assert "tied with" in text and "tied: the front points this one cannot be told from (unpaired: their " \
        "intervals overlap on every objective)" in text
    # the sla policy's best accuracy within 2000 ms is trial 1 (0.65); trial 0 is tied with it and faster: the
    # stated preference decides; by default the policy's own pick stands, and the choice says it is tied
    choice = choose_trial(StudySnapshot.of(study), OBJECTIVES, PromotionPolicy(policy="sla", sla_p95_ms=2000))
    assert choice.trial.number == 1
    assert "trial 1 is tied with trial 0" in choice.why and "kept the policy's own pick" in choice.why
    accurate = choose_trial(StudySnapshot.of(study), OBJECTIVES,
                            PromotionPolicy(policy="sla", sla_p95_ms=2000, prefer="accuracy"))
    assert accurate.trial.number == 1 and "chose trial 1, the highest field_accuracy (0.65" in accurate.why
    fastest = choose_trial(StudySnapshot.of(study), OBJECTIVES,
                           PromotionPolicy(policy="sla", sla_p95_ms=2000, prefer="latency"))
    assert fastest.trial.number == 0 and "chose trial 0, the lowest latency_p95_ms (1000" in fastest.why


# --- config ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("evaluation", "message"), [
    ({"stages": [8, 4]}, "'stages' must be request counts in increasing order"),
    ({"stages": [0]}, "'stages' must be request counts in increasing order"),
    ({"stages": "8"}, "'stages' must be list or tuple or null"),
    ({"error_rate": 0}, "'error_rate' must be in (0, 0.5]"),
    ({"error_rate": 0.7}, "'error_rate' must be in (0, 0.5]"),
    ({"racing_error_rate": 0}, "'racing_error_rate' must be in (0, 0.5]"),
    ({"refine_requests": -1}, "'refine_requests' must be 0 or more"),
])
def test_bad_racing_settings_are_refused_in_one_line(write_config, evaluation, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_config(write_config(smoke_config(evaluation=evaluation)))


def test_a_stage_at_or_above_the_trial_size_is_refused(write_config, tmp_path):
    config = load_config(write_config(smoke_config(evaluation={"stages": [3]})))  # limit 3
    with pytest.raises(ConfigError, match=r"stage 3 is not below the 3 requests of a trial"):
        prepare_study(config, tracking_uri=f"sqlite:///{tmp_path}/m.db", backend=FakeBackend())


# --- a study that races and refines, on the fake backend -------------------------------------------------------

TASK_API = load_experiment(EXPERIMENT)
RIGHT = answers_by_request({e.request: e.expected for e in TASK_API.examples})
JUNK = json.dumps({"action": "x" * 400})


def _good_or_junk(messages, settings) -> str:
    """Right answers only with two examples and the schema; otherwise a long wrong answer (slow to decode)."""
    return RIGHT(messages, settings) if settings.few_shot == 2 and settings.format == "schema" else JUNK


class Counting(FakeBackend):
    """Counts the timed requests (every call but the warm-ups, which send the pool's first example)."""

    def __init__(self, warmup_request: str, answer=_good_or_junk) -> None:
        super().__init__(answer)
        self.warmup_request, self.timed = warmup_request, 0
        self.asked: list[str] = []  # the timed requests, in order

    def generate(self, messages, settings, *, schema):
        if messages[-1]["content"] != self.warmup_request:
            self.timed += 1
            self.asked.append(messages[-1]["content"])
        return super().generate(messages, settings, schema=schema)


def _runs(tmp_path: Path):
    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    experiment = client.get_experiment_by_name("smoke")
    runs = client.search_runs([experiment.experiment_id], max_results=200)
    return client, [r for r in runs if "mlflow.parentRunId" in r.data.tags]


def _requests_rows(client: MlflowClient, run_id: str, folder: Path) -> int:
    path = client.download_artifacts(run_id, "requests.json", str(folder))
    return len(json.loads(Path(path).read_text())["data"])


def test_a_study_races_hopeless_trials_and_refines_its_front_with_every_request_accounted(write_config, tmp_path):
    from pipeline.job.prompts import load_prompts
    from pipeline.search.prepare import warmup_example

    raw = smoke_config(evaluation={"limit": 10, "stages": [3], "refine_requests": 30},
                       study={"trials": 6, "sampler": "random", "seed": 3},
                       baseline={"num_ctx": 1024, "num_predict": 64, "temperature": 0.0, "top_p": 1.0, "top_k": 40,
                                 "few_shot": 2, "prompt_variant": "compact", "example_selection": "static",
                                 "format": "schema"})
    config = load_config(write_config(raw))
    warmup = warmup_example(TASK_API, load_prompts(config.prompts, TASK_API)).request
    backend = Counting(warmup)
    prepared = prepare_study(config, tracking_uri=f"sqlite:///{tmp_path}/mlflow.db", backend=backend)
    output = io.StringIO()
    report = run_study(prepared, trials=6, console=Console(file=output, width=200))
    study = optuna.load_study(study_name="smoke", storage=prepared.storage_url)
    trials = {t.number: t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE}
    raced = [t for t in trials.values() if RACED in t.user_attrs]
    assert raced, "the junk settings are dominated by the baseline after 3 requests"
    for t in raced:
        assert t.user_attrs["metrics"]["requests_measured"] == 3
        assert t.user_attrs[RACED].startswith("stopped after 3 of 10 requests: trial ")
    assert not any(RACED in t.user_attrs for t in trials.values() if t.user_attrs.get(BASELINE))
    topups = [t for t in trials.values() if TOPS_UP in t.user_attrs]
    assert topups and "refining: trial" in output.getvalue()
    client, runs = _runs(tmp_path)
    by_number = {int(r.data.tags["optuna.trial_number"]): r for r in runs}
    # how each trial's requests were spent is on every run
    assert {(r.data.tags["evaluation.stages"], r.data.tags["evaluation.racing_error_rate"],
             r.data.tags["evaluation.error_rate"], r.data.tags["evaluation.refine_requests"]) for r in runs} == \
        {("3", "0.2", "0.05", "30")}
    for t in topups:
        run = by_number[t.number]
        earlier = trials[t.user_attrs[TOPS_UP]]
        added = run.data.metrics["requests_run"]
        assert run.data.tags[TOPS_UP] == str(earlier.number)
        assert run.data.metrics["requests_measured"] == earlier.user_attrs["metrics"]["requests_measured"] + added
        assert by_number[earlier.number].data.tags["superseded_by"] == str(t.number)
    # every timed request the backend answered is one a run says it ran, and each run's table holds its records
    assert sum(r.data.metrics["requests_run"] for r in runs) == backend.timed
    for run in runs:
        assert _requests_rows(client, run.info.run_id, tmp_path / run.info.run_id) == \
            run.data.metrics["requests_measured"]
    assert sum(r.data.metrics["requests_run"] for r in runs if TOPS_UP in r.data.tags) <= 30
    # the table leaves superseded trials out and the front is made of the latest measurements
    assert not set(report.trials["number"]) & superseded(study)
    assert set(report.front["number"]) <= set(report.trials["number"])


def test_refine_on_request_adds_no_trials_and_reads_earlier_requests_back_from_mlflow(write_config, tmp_path):
    from pipeline.commands.cli import build_parser
    from pipeline.job.prompts import load_prompts
    from pipeline.search.prepare import warmup_example

    args = build_parser().parse_args(["study", "--config", "x.yaml", "--refine", "12"])
    assert args.refine == 12 and args.trials is None
    config = load_config(write_config(smoke_config(evaluation={"limit": 4}, study={"trials": 3, "seed": 11})))
    warmup = warmup_example(TASK_API, load_prompts(config.prompts, TASK_API)).request
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    earlier = Counting(warmup, RIGHT)
    first = run_study(prepare_study(config, tracking_uri=uri, backend=earlier), trials=3,
                      console=Console(file=io.StringIO()))
    assert (first.trials["requests_measured"] == 4).all()
    backend = Counting(warmup, RIGHT)  # a new process: the earlier records are only in MLflow
    output = io.StringIO()
    again = run_study(prepare_study(config, tracking_uri=uri, backend=backend), trials=0, refine=12,
                      console=Console(file=output, width=200))
    assert again.new_trials == len([line for line in output.getvalue().splitlines() if line.startswith("refining")])
    assert len(again.trials) == len(first.trials)                 # the same settings, no new ones
    topped = again.trials[again.trials["tops_up"].notna()]
    assert not topped.empty and (topped["requests_measured"] > 4).all()
    client, runs = _runs(tmp_path)
    added = sum(r.data.metrics["requests_run"] for r in runs if TOPS_UP in r.data.tags)
    assert 0 < added <= 12
    # the backend of the refinement answered the added requests and nothing else: none of the 4 requests the
    # topped-up trials had already answered was sent again, so their records can only have come from MLflow
    assert backend.timed == added
    assert len(set(earlier.asked)) == 4 and not set(backend.asked) & set(earlier.asked)
    for run in runs:
        assert _requests_rows(client, run.info.run_id, tmp_path / run.info.run_id) == \
            run.data.metrics["requests_measured"]
    # the topped-up trials' earlier requests came back from MLflow: the same answers, scored again
    for row in topped.itertuples():
        earlier = next(r for r in runs if r.data.tags["optuna.trial_number"] == str(int(row.tops_up)))
        assert earlier.data.tags["superseded_by"] == str(row.number)


def test_a_raced_trial_is_never_on_the_front_though_its_few_requests_look_better():
    # trial 1 stopped after 4 requests, on which trial 0 beat it; over those 4 it scored better than trial 0 over 20
    study = _study({0: (bounds((0.3, 0.5), (900, 1100)), 20), 1: (bounds((0.2, 0.8), (800, 1000)), 4)},
                   {1: {RACED: "stopped after 4 of 20 requests: trial 0 dominates it"}})
    assert [t.number for t in front_trials(study)] == [0]
    frame = trials_frame(study, OBJECTIVES)
    assert list(frame.loc[frame["pareto"], "number"]) == [0] and frame.loc[frame["number"] == 1, "raced"].item()
