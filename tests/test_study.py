"""Real studies on the embedded model, tracked in MLflow on a temporary sqlite store."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import optuna
import pandas as pd
import pytest
from mlflow import MlflowClient

from pipeline.cli import main
from tests.conftest import ROOT, files_under, smoke_config

pytestmark = pytest.mark.slow


def run(tmp_path: Path, *args: str) -> int:
    return main(["study", "--tracking-uri", f"sqlite:///{tmp_path}/mlflow.db", *args])


def runs_of(tmp_path: Path, experiment: str = "smoke"):
    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    exp = client.get_experiment_by_name(experiment)
    runs = client.search_runs([exp.experiment_id], max_results=100)
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    return client, parents, children


def load(tmp_path: Path, name: str = "smoke") -> optuna.Study:
    return optuna.load_study(study_name=name, storage=f"sqlite:///{tmp_path}/optuna.db")


@pytest.fixture(scope="module")
def finished_study(tmp_path_factory):
    """A 3-trial smoke study, shared by the read-only checks below."""
    folder = tmp_path_factory.mktemp("study")
    cwd = os.getcwd()
    os.chdir(folder)
    try:
        assert run(folder, "--config", str(ROOT / "configs/smoke.yaml"), "--trials", "3") == 0
    finally:
        os.chdir(cwd)
    return folder


def test_parent_and_nested_trial_runs(finished_study):
    client, parents, children = runs_of(finished_study)
    assert len(parents) == 1 and len(children) == 3
    parent = parents[0]
    assert parent.info.status == "FINISHED" and parent.info.run_name == "smoke"
    assert {c.data.tags["mlflow.parentRunId"] for c in children} == {parent.info.run_id}
    assert sorted(c.info.run_name for c in children) == ["trial-000", "trial-001", "trial-002"]
    assert all(c.info.status == "FINISHED" for c in children)
    study = load(finished_study)
    assert study.user_attrs["mlflow_parent_run_id"] == parent.info.run_id
    assert {t.user_attrs["mlflow_run_id"] for t in study.trials} == {c.info.run_id for c in children}
    assert parent.data.params["study.objectives"] == "schema_valid_rate:maximize,latency_p95_ms:minimize"
    inputs = parent.inputs.dataset_inputs
    assert len(inputs) == 1 and inputs[0].dataset.name == "task_api-dev"
    assert inputs[0].tags[0].value == "dev"


def test_trial_metrics_params_and_tags(finished_study):
    _, _, children = runs_of(finished_study)
    for child in children:
        m, p, t = child.data.metrics, child.data.params, child.data.tags
        assert set(p) == {"num_ctx", "num_predict", "temperature", "top_p", "top_k", "few_shot", "prompt_variant",
                          "example_selection", "format", "seed"}
        for rate in ("schema_valid_rate", "parse_rate", "action_accuracy", "exact_match_rate", "field_accuracy"):
            assert 0.0 <= m[rate] <= 1.0
        assert 0 < m["latency_p50_ms"] <= m["latency_p95_ms"] <= m["latency_p99_ms"] < 60_000
        assert 0 < m["ttft_p50_ms"] <= m["ttft_p95_ms"] and m["ttft_p50_ms"] < m["latency_p99_ms"]
        assert m["prefill_ms_mean"] > 0 and m["decode_ms_mean"] > 0 and m["decode_tokens_per_s"] > 1
        assert m["prompt_tokens_engine"] > 0 and m["prompt_tokens_estimated"] > 0
        assert m["failed_requests"] == 0 and 0 <= m["truncated_answers"] <= 3
        assert t["model"] == "SmolLM2-135M-Instruct.Q4_1.gguf" and len(t["model_sha256"]) == 64
        for tag in ("engine", "engine_version", "cpu", "threads", "package_version", "git_commit"):
            assert t[tag]
        assert t["pareto"] in ("true", "false")
    loads = sorted(c.data.metrics["model_loads"] for c in children)
    assert loads == [0.0, 0.0, 1.0]  # num_ctx is fixed: one load for the whole study
    assert max(c.data.metrics["model_load_ms"] for c in children) > 0


def test_request_table_artifact(finished_study):
    client, _, children = runs_of(finished_study)
    child = children[0]
    path = client.download_artifacts(child.info.run_id, "requests.json", str(finished_study / "dl"))
    table = json.loads(Path(path).read_text())
    frame = pd.DataFrame(table["data"], columns=table["columns"])
    assert len(frame) == 3
    assert {"request", "expected", "answer", "schema_valid", "action_correct", "latency_ms"} <= set(frame.columns)
    assert frame["schema_valid"].mean() == pytest.approx(child.data.metrics["schema_valid_rate"])


def test_pareto_artifacts_and_tags(finished_study):
    client, parents, children = runs_of(finished_study)
    parent = parents[0]
    names = {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert {"pareto_front.png", "pareto_front.csv", "pareto_front.json", "trials.csv"} <= names
    png = client.download_artifacts(parent.info.run_id, "pareto_front.png", str(finished_study / "dl"))
    assert Path(png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    csv = client.download_artifacts(parent.info.run_id, "pareto_front.csv", str(finished_study / "dl"))
    front = pd.read_csv(csv)
    study = load(finished_study)
    assert set(front["number"]) == {t.number for t in study.best_trials} and len(front) >= 1
    tagged = {c.info.run_id for c in children if c.data.tags["pareto"] == "true"}
    assert tagged == set(front["mlflow_run_id"])
    assert parent.data.metrics["front_size"] == len(front)
    # no front trial is dominated by another trial
    values = {t.number: t.values for t in study.trials}
    for n in front["number"]:
        v = values[n]
        assert not any(w[0] >= v[0] and w[1] <= v[1] and w != v for w in values.values())


def test_rerun_extends_the_same_study_and_parent(tmp_path):
    config = str(ROOT / "configs/smoke.yaml")
    assert run(tmp_path, "--config", config, "--trials", "1") == 0
    _, parents, _ = runs_of(tmp_path)
    assert run(tmp_path, "--config", config, "--trials", "1") == 0
    _, parents_after, children = runs_of(tmp_path)
    assert [p.info.run_id for p in parents_after] == [p.info.run_id for p in parents]
    assert parents_after[0].info.status == "FINISHED"
    assert len(children) == 2 and len(load(tmp_path).trials) == 2
    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    table = json.loads(Path(client.download_artifacts(parents[0].info.run_id, "pareto_front.json",
                                                      str(tmp_path / "dl"))).read_text())
    assert len(table["data"]) == len(load(tmp_path).best_trials)  # the front is replaced, not appended
    # a run with another study definition is refused before anything is written
    before = files_under(tmp_path)
    assert run(tmp_path, "--config", config, "--trials", "1", "--limit", "2") == 2
    assert len(load(tmp_path).trials) == 2 and files_under(tmp_path) == before


def test_sla_constraint_keeps_breaking_trials_off_the_front(tmp_path, write_config):
    path = write_config(smoke_config(constraints={"latency_p95_ms": {"max": 1}},
                                     evaluation={"limit": 2, "early_abort": False}))
    assert run(tmp_path, "--config", str(path), "--trials", "2") == 0
    study = load(tmp_path)
    assert study.best_trials == []
    assert all(t.constraints["latency_p95_ms"] > 0 for t in study.trials)
    assert [t.user_attrs["metrics"]["requests_measured"] for t in study.trials] == [2, 2]  # no early abort
    _, _, children = runs_of(tmp_path)
    assert {c.data.tags["pareto"] for c in children} == {"false"}
    assert {c.data.tags["feasible"] for c in children} == {"false"}


def test_trial_that_cannot_meet_its_constraint_stops_early(tmp_path, write_config):
    # Zero-shot prose answers: with schema_valid_rate >= 0.9 over 6 requests, the first invalid answer ends it.
    space = {"few_shot": 0, "format": "off", "prompt_variant": "minimal", "num_predict": 32}
    path = write_config(smoke_config(search_space=space, constraints={"schema_valid_rate": {"min": 0.9}},
                                     evaluation={"limit": 6}))
    assert run(tmp_path, "--config", str(path), "--trials", "1") == 0
    trial = load(tmp_path).trials[0]
    used = int(trial.user_attrs["metrics"]["requests_measured"])
    client, _, children = runs_of(tmp_path)
    path = client.download_artifacts(children[0].info.run_id, "requests.json", str(tmp_path / "dl"))
    table = json.loads(Path(path).read_text())
    frame = pd.DataFrame(table["data"], columns=table["columns"])
    assert len(frame) == used < 6
    assert not frame["schema_valid"].iloc[-1] and frame["schema_valid"].iloc[:-1].all()  # stopped at the first miss
    assert trial.constraints["schema_valid_rate"] == pytest.approx(0.9 - (used - 1 + 6 - used) / 6)
    assert trial.user_attrs["aborted"].startswith(f"stopped after {used} of 6 requests: schema_valid_rate >= 0.9")
    assert children[0].data.tags["aborted"] == trial.user_attrs["aborted"]
    assert children[0].data.tags["feasible"] == "false" and load(tmp_path).best_trials == []
    interval = children[0].data.metrics["schema_valid_rate_ci95_high"]
    assert interval <= 1.0 if used >= 2 else math.isnan(interval)  # an interval needs two requests


def test_setting_that_cannot_fit_is_reported_infeasible_not_run(tmp_path, write_config):
    space = {"num_ctx": 256, "num_predict": 160, "prompt_variant": "verbose", "few_shot": 5}
    path = write_config(smoke_config(search_space=space))
    assert run(tmp_path, "--config", str(path), "--trials", "1") == 0
    trial = load(tmp_path).trials[0]
    assert trial.state == optuna.trial.TrialState.COMPLETE and trial.constraints["context_fit"] > 0
    assert "does not fit num_ctx 256" in trial.user_attrs["infeasible"]
    client, _, children = runs_of(tmp_path)
    assert children[0].data.tags["infeasible"] == trial.user_attrs["infeasible"]
    assert client.list_artifacts(children[0].info.run_id) == []  # no request ran


def test_mlflow_run_entry_point(tmp_path):
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path}/mlflow.db"}
    done = subprocess.run(
        [sys.executable, "-m", "mlflow", "run", str(ROOT), "-e", "study", "--env-manager", "local",
         "--experiment-name", "smoke", "-P", "config=configs/smoke.yaml", "-P", "trials=2", "-P", "sampler=random"],
        env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    _, parents, children = runs_of(tmp_path)
    assert len(parents) == 1 and len(children) == 2
    parent = parents[0]
    assert parent.data.params["trials"] == "2"  # the run `mlflow run` started is the study's parent
    assert parent.data.params["study.sampler"] == "random"
    assert parent.info.status == "FINISHED"
    assert {c.data.tags["mlflow.parentRunId"] for c in children} == {parent.info.run_id}
    assert (tmp_path / "optuna.db").exists()  # the Optuna storage sits next to the MLflow store


def test_repeated_settings_are_reused_and_an_exhausted_space_ends_the_study(tmp_path, write_config, capsys):
    from pipeline.study import REUSE_LIMIT

    space = {"num_predict": 32, "few_shot": {"choices": [0, 2]}, "prompt_variant": "minimal", "format": "off"}
    path = write_config(smoke_config(search_space=space, evaluation={"limit": 2}))
    assert run(tmp_path, "--config", str(path), "--trials", "4") == 0
    err = " ".join(capsys.readouterr().err.split())
    assert "the search space looks exhausted; stopping with 2 measured trials" in err
    study = load(tmp_path)
    measured = [t for t in study.trials if "same_as" not in t.user_attrs]
    assert sorted(t.params["few_shot"] for t in measured) == [0, 2]  # each setting measured once
    assert all("same_as" in t.user_attrs for t in study.trials[-REUSE_LIMIT:]) and study.user_attrs["target"] == 2
    _, _, children = runs_of(tmp_path)
    assert len(children) == 2  # a reused trial has no MLflow run
