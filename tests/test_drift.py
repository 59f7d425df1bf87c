"""Drift control: a reference setting measured again between trials; trials run while it moved are flagged,
recorded, measured again on request, and compare/promote say when latencies come from different machine states."""

from __future__ import annotations

import io

import optuna
import pandas as pd
from mlflow import MlflowClient
from rich.console import Console

from pipeline.job.experiment import load_experiment
from pipeline.measure.registry import Objective
from pipeline.search.compare import StudyFront, compare
from pipeline.search.config import load_config
from pipeline.search.drift import DriftMonitor, machine_note
from pipeline.search.fronts import trials_frame
from pipeline.search.prepare import prepare_study
from pipeline.search.study import run_study
from pipeline.search.trials import BASELINE, REMEASURES
from pipeline.testing import FakeBackend, answers_by_request
from tests.conftest import EXPERIMENT, smoke_config

TASK_API = load_experiment(EXPERIMENT)
RIGHT = answers_by_request({e.request: e.expected for e in TASK_API.examples})


def test_the_monitor_flags_the_trials_between_two_references_that_differ():
    speeds = iter([100.0, 104.0, 150.0, 151.0])
    series, flagged = [], []
    monitor = DriftMonitor(lambda: next(speeds), every=2, threshold=0.15,
                           record=lambda step, ms, speed: series.append((step, ms, round(speed, 3))),
                           flag=lambda numbers, reason: flagged.append((numbers, reason)))
    monitor.start()
    assert monitor.trial_done(0) == [] and monitor.trial_done(1) == []      # 100 -> 104: +4%, within 15%
    assert monitor.trial_done(2) == [] and monitor.trial_done(3) == [2, 3]  # 104 -> 150: +44%
    assert monitor.trial_done(4) == [] and monitor.trial_done(5) == []      # 150 -> 151
    assert series == [(0, 100.0, 1.0), (1, 104.0, 0.962), (2, 150.0, 0.667), (3, 151.0, 0.662)]
    assert flagged[0][0] == [2, 3] and "104 -> 150 ms (+44%) over trials 2-3" in flagged[0][1]


def test_machine_notes_only_beyond_the_threshold():
    assert machine_note(("a", 300.0), ("b", 330.0), 0.15) is None
    assert machine_note(("a", 300.0), ("b", None), 0.15) is None
    note = machine_note(("trial 4", 300.0), ("the baseline (trial 0)", 400.0), 0.15)
    assert note.startswith("trial 4 and the baseline (trial 0) were measured at different machine speeds")
    assert "300 vs 400 ms, +33%" in note


class Slowing(FakeBackend):
    """A machine that becomes 5x slower after ``after`` requests (every call counts)."""

    def __init__(self, after: int) -> None:
        super().__init__(RIGHT)
        self.after, self.seen = after, 0

    def generate(self, messages, settings, *, schema):
        self.seen += 1
        if self.seen > self.after:
            self.base_ms = 500.0
        return super().generate(messages, settings, schema=schema)


def test_a_study_flags_and_measures_again_the_trials_run_while_the_machine_slowed(write_config, tmp_path):
    raw = smoke_config(evaluation={"limit": 3, "drift_every": 1, "drift_requests": 2, "drift_remeasure": True},
                       study={"trials": 4, "sampler": "random", "seed": 5})
    config = load_config(write_config(raw))
    # start: 1 warm-up + 2 reference; trial 0: 1 warm-up + 3 requests, then 2 reference; trial 1 slows down midway
    backend = Slowing(after=1 + 2 + 4 + 2 + 2)
    prepared = prepare_study(config, tracking_uri=f"sqlite:///{tmp_path}/mlflow.db", backend=backend)
    output = io.StringIO()
    report = run_study(prepared, trials=4, console=Console(file=output, width=300))
    study = optuna.load_study(study_name="smoke", storage=prepared.storage_url)
    flagged = study.user_attrs["drift"]
    assert list(flagged) == ["1"] and "the machine's speed moved while this trial ran" in flagged["1"]
    assert "trials 1: the machine's speed moved" in output.getvalue() and "measuring them again" in output.getvalue()
    again = [t for t in study.trials if t.user_attrs.get(REMEASURES) == 1]
    assert len(again) == 1 and again[0].state == optuna.trial.TrialState.COMPLETE
    assert 1 not in set(report.trials["number"]) and again[0].number in set(report.trials["number"])
    # every trial carries the reference measured before it; the parent holds the series
    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    parent = client.get_run(report.parent_run_id)
    series = client.get_metric_history(report.parent_run_id, "drift_reference_ms")
    assert len(series) == 1 + 4 + 1 and sorted(m.step for m in series) == list(range(6))
    assert parent.data.metrics["drift_speed"] < 0.5          # 5x slower at the end
    children = client.search_runs([parent.info.experiment_id], "tags.mlflow.parentRunId = '%s'" % parent.info.run_id)
    by_number = {int(r.data.tags["optuna.trial_number"]): r for r in children}
    assert by_number[1].data.tags["drift"] == flagged["1"]
    assert all("reference_ms" in r.data.tags for r in children)
    trials = trials_frame(study, config.objectives)
    assert trials["reference_ms"].notna().all()


def _front(name: str, reference: float) -> StudyFront:
    trials = pd.DataFrame([{"number": 0, "feasible": True, "pareto": True, "field_accuracy": 0.5,
                            "latency_p95_ms": 900.0, "reference_ms": reference}])
    return StudyFront(name, (Objective("field_accuracy", "maximize"), Objective("latency_p95_ms", "minimize")),
                      trials, trials, None)


def test_compare_says_when_studies_ran_at_different_machine_speeds():
    assert compare([_front("a", 300.0), _front("b", 310.0)]).notes == ()
    notes = compare([_front("a", 300.0), _front("b", 420.0), _front("c", 305.0)]).notes
    assert len(notes) == 1 and notes[0].startswith("study 'a' and study 'b' were measured at different machine speeds")


def test_promote_says_when_the_chosen_trial_and_the_baseline_ran_at_different_speeds():
    from pipeline.promote.choose import machine_states_note
    from pipeline.search.config import EvaluationConfig, StudyConfig
    from pipeline.search.snapshot import StudySnapshot

    study = optuna.create_study(directions=["maximize", "minimize"])
    distribution = optuna.distributions.IntDistribution(0, 9)
    for number, reference in ((0, 300.0), (1, 420.0), (2, 310.0)):
        study.add_trial(optuna.trial.create_trial(
            values=[0.5, 900.0], params={"x": number}, distributions={"x": distribution},
            user_attrs={"metrics": {}, "reference_ms": reference, **({BASELINE: True} if number == 0 else {})}))
    config = StudyConfig(path=EXPERIMENT, experiment=EXPERIMENT, prompts=EXPERIMENT, evaluation=EvaluationConfig())
    snapshot, threshold = StudySnapshot.of(study), config.evaluation.drift_threshold
    note = machine_states_note(snapshot, snapshot.trials[1], threshold=threshold)
    assert note.startswith("on dev, trial 1 and the baseline (trial 0) were measured at different machine speeds")
    assert note.endswith("the held-out side-by-side measures both at once")
    assert machine_states_note(snapshot, snapshot.trials[2], threshold=threshold) is None  # 300 vs 310 ms: same
    assert machine_states_note(snapshot, snapshot.trials[0], threshold=threshold) is None  # the baseline itself
