"""Traffic files: the requests a server sees in arrival order — repeats numbered by their place, new labelled
requests, reproducible samples — and a study measured over them."""

from __future__ import annotations

import io

from rich.console import Console

from pipeline.job.experiment import load_experiment
from pipeline.search.config import load_config
from pipeline.search.prepare import prepare_study
from pipeline.search.study import run_study
from pipeline.testing import FakeBackend, answers_by_request
from tests.conftest import EXPERIMENT, notes_job, smoke_config


def test_traffic_keeps_arrival_order_numbers_repeats_and_samples_reproducibly(tmp_path):
    traffic = [{"repeat": "r1"}, {"repeat": "r1"}, {"id": "r1b", "split": "dev", "text": "read the note alpha",
                                                    "expected": {"op": "read", "note": "alpha"}},
               {"sample": {"count": 6, "seed": 3, "split": "dev", "weights": {"read": 1, "w1": 1}}}]
    experiment = load_experiment(notes_job(tmp_path / "job", traffic=traffic))
    dev = [e.id for e in experiment.split("dev")]
    assert dev[:3] == ["r1", "r1#2", "r1b"]
    assert len(dev) == 9 and len(set(dev)) == 9  # each place in the traffic has its own id
    assert set(dev[3:]) <= {"r1#3", "r1#4", "r1#5", "r1#6", "r1#7", "r1b#2", "r1b#3", "r1b#4", "r1b#5", "r1b#6",
                            "w1", "w1#2", "w1#3", "w1#4", "w1#5", "w1#6"}
    again = load_experiment(notes_job(tmp_path / "again", traffic=traffic))
    assert [e.id for e in again.split("dev")] == dev  # the seed fixes the draw
    assert experiment.split("holdout") == []  # the traffic has no held-out requests: that split has none
    assert experiment.without_traffic().split("dev", None)[0].id == "r1"
    assert experiment.digest != experiment.without_traffic().digest  # the traffic is part of what was measured
    assert load_experiment(notes_job(tmp_path / "plain")).digest == experiment.without_traffic().digest


def test_the_shipped_task_api_traffic_has_the_source_mix_and_look_alikes():
    experiment = load_experiment(EXPERIMENT)
    dev = experiment.traffic["dev"]
    assert len(dev) == 120 and len(experiment.traffic["holdout"]) == 80
    list_all = {"action": "list_tasks", "params": {"status": "all"}, "success": True}
    share = sum(e.expected == list_all for e in dev) / len(dev)
    assert 0.35 <= share <= 0.45  # the source's 40% "List all tasks" (and its paraphrases), drawn
    assert sum(e.request == "List all tasks" for e in dev) >= 0.2 * len(dev)  # the same query, again and again
    requests = {e.request for e in dev}
    for pair in (("Create task: Review PR #42", "Create task: Review PR #43"),
                 ("Show high priority tasks", "Show low priority tasks"), ("delete task 7", "complete task 7")):
        assert set(pair) <= requests, pair
    by_request = {e.request: e.expected for e in dev}
    assert by_request["Create task: Review PR #42"] != by_request["Create task: Review PR #43"]


def test_a_study_over_traffic_measures_every_arrival_and_pairs_them_by_place(tmp_path, write_config):
    # the Task API over its dev traffic: a trial of 30 arrivals measures "List all tasks" again and again, each
    # arrival under its own id, and every trial takes the same arrivals in the same order
    experiment = load_experiment(EXPERIMENT)
    right = answers_by_request({e.request: e.expected for e in experiment.requests})
    config = load_config(write_config(smoke_config(evaluation={"traffic": True, "limit": 30, "stages": []},
                                                   constraints={})))
    prepared = prepare_study(config, tracking_uri=f"sqlite:///{tmp_path}/mlflow.db",
                             backend=FakeBackend(right, per_prompt_char_ms=0.0))
    assert [e.id for e in prepared.examples] == [e.id for e in experiment.traffic["dev"][:30]]
    report = run_study(prepared, trials=2, console=Console(file=io.StringIO()))
    assert (report.trials["requests_measured"] == 30).all() and (report.trials["field_accuracy"] == 1.0).all()
    ids = [e.id for e in prepared.examples]
    assert len(set(ids)) == 30 and any("#" in i for i in ids)  # repeats, numbered by their place
    # a study over the split and one over the traffic are told apart by what they measured
    plain = prepare_study(load_config(write_config(smoke_config(), "plain.yaml")),
                          tracking_uri=f"sqlite:///{tmp_path}/plain.db", backend=FakeBackend(right))
    assert plain.experiment.digest != prepared.experiment.digest and not plain.experiment.traffic
