"""Studies tracked in MLflow on a temporary sqlite store.

The study logic (runs, artifacts, the front, constraints, early abort, reuse, extending a study) runs on the
in-memory :class:`pipeline.testing.FakeBackend`; what only a model can show — real timings, the command line
end to end, ``mlflow run``, each shipped experiment — runs on the bundled model (marked slow).
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import optuna
import pandas as pd
import pytest
from mlflow import MlflowClient
from rich.console import Console

from pipeline.commands.cli import main
from pipeline.errors import ConfigError
from pipeline.job.experiment import load_experiment
from pipeline.search.config import load_config
from pipeline.search.prepare import prepare_study
from pipeline.search.reuse import REUSE_LIMIT
from pipeline.search.study import run_study
from pipeline.testing import FakeBackend, answers_by_request
from tests.conftest import EXPERIMENT, ROOT, files_under, smoke_config

TASK_API = load_experiment(EXPERIMENT)
RIGHT = answers_by_request({e.request: e.expected for e in TASK_API.examples})


def fake_study(tmp_path: Path, config_path: Path | str, *, trials: int, backend: FakeBackend | None = None,
               **overrides):
    config = load_config(config_path)
    if overrides:
        config = config.with_overrides(**overrides)
    prepared = prepare_study(config, tracking_uri=f"sqlite:///{tmp_path}/mlflow.db", backend=backend or FakeBackend(RIGHT))
    return run_study(prepared, trials=trials, console=Console(file=io.StringIO()))


def runs_of(tmp_path: Path, experiment: str = "smoke"):
    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    exp = client.get_experiment_by_name(experiment)
    runs = client.search_runs([exp.experiment_id], max_results=100)
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    return client, parents, children


def load(tmp_path: Path, name: str = "smoke") -> optuna.Study:
    return optuna.load_study(study_name=name, storage=f"sqlite:///{tmp_path}/optuna.db")


def table(client: MlflowClient, run_id: str, name: str, folder: Path) -> pd.DataFrame:
    data = json.loads(Path(client.download_artifacts(run_id, name, str(folder))).read_text())
    return pd.DataFrame(data["data"], columns=data["columns"])


@pytest.fixture(scope="module")
def finished_study(tmp_path_factory):
    """A 3-trial smoke study on the fake backend, shared by the read-only checks below."""
    folder = tmp_path_factory.mktemp("study")
    # Wrong answers without examples, right ones with: settings differ in accuracy as well as in speed.
    backend = FakeBackend(lambda messages, settings: RIGHT(messages, settings) if settings.few_shot else "{}")
    fake_study(folder, ROOT / "configs/smoke.yaml", trials=3, backend=backend)
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
    assert parent.data.params["study.objectives"] == "field_accuracy:maximize,latency_p95_ms:minimize"
    assert parent.data.tags["experiment"] == "task_api" and parent.data.tags["label"] == "/action"
    inputs = parent.inputs.dataset_inputs
    assert len(inputs) == 1 and inputs[0].dataset.name == "task_api-dev"
    assert inputs[0].tags[0].value == "dev"


def test_trial_metrics_params_and_tags(finished_study):
    _, _, children = runs_of(finished_study)
    for child in children:
        m, p, t = child.data.metrics, child.data.params, child.data.tags
        assert set(p) == {"num_ctx", "num_predict", "temperature", "top_p", "top_k", "few_shot", "prompt_variant",
                          "example_selection", "format", "seed"}
        for rate in ("schema_valid_rate", "parse_rate", "label_accuracy", "exact_match_rate", "field_accuracy"):
            assert 0.0 <= m[rate] <= 1.0
        # one metric per field the expected answers use, for the MLflow UI to show which field fails
        assert {"field_accuracy./action", "field_accuracy./params/title", "field_accuracy./success"} <= set(m)
        assert m["field_accuracy_ci95_low"] <= m["field_accuracy"] <= m["field_accuracy_ci95_high"]
        assert 0 < m["latency_p50_ms"] <= m["latency_p95_ms"] <= m["latency_p99_ms"]
        assert t["engine"] == "fake" and t["study"] == "smoke"
        for tag in ("cpu", "package_version", "git_commit"):
            assert t[tag]
        assert t["pareto"] in ("true", "false")
        right = p["few_shot"] != "0"
        assert (m["field_accuracy"] == 1.0) is right and (m["label_accuracy"] == 1.0) is right


def test_request_and_field_error_tables(finished_study):
    client, _, children = runs_of(finished_study)
    for child in children:
        requests = table(client, child.info.run_id, "requests.json", finished_study / "dl")
        assert len(requests) == 3
        assert {"request", "expected", "answer", "schema_valid", "label_correct", "field_accuracy", "wrong_fields",
                "latency_ms"} <= set(requests.columns)
        assert requests["field_accuracy"].mean() == pytest.approx(child.data.metrics["field_accuracy"])
        artifacts = {a.path for a in client.list_artifacts(child.info.run_id)}
        # logged as MLflow tables: MLflow's own reader finds them through the run's tag
        loaded = client.load_table(child.info.experiment_id, "requests.json", run_ids=[child.info.run_id])
        assert list(loaded["request_id"]) == list(requests["request_id"])
        if child.data.metrics["field_accuracy"] < 1:
            errors = table(client, child.info.run_id, "field_errors.json", finished_study / "dl")
            assert list(errors.columns) == ["path", "expected", "got", "count"]
            assert set(errors["got"]) == {"(missing)"} and "/action" in set(errors["path"])
        else:
            assert "field_errors.json" not in artifacts  # nothing wrong, no table


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
    config = ROOT / "configs/smoke.yaml"
    fake_study(tmp_path, config, trials=1)
    _, parents, _ = runs_of(tmp_path)
    fake_study(tmp_path, config, trials=1)
    _, parents_after, children = runs_of(tmp_path)
    assert [p.info.run_id for p in parents_after] == [p.info.run_id for p in parents]
    assert parents_after[0].info.status == "FINISHED"
    assert len(children) == 2 and len(load(tmp_path).trials) == 2
    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    front = table(client, parents[0].info.run_id, "pareto_front.json", tmp_path / "dl")
    assert len(front) == len(load(tmp_path).best_trials)  # the front is replaced, not appended
    # a run with another study definition is refused before anything is written
    before = files_under(tmp_path)
    with pytest.raises(ConfigError, match="was run with limit='3', this config gives '2'"):
        fake_study(tmp_path, config, trials=1, evaluation={"limit": 2})
    assert len(load(tmp_path).trials) == 2 and files_under(tmp_path) == before


def test_sla_constraint_keeps_breaking_trials_off_the_front(tmp_path, write_config):
    path = write_config(smoke_config(constraints={"latency_p95_ms": {"max": 1}},
                                     evaluation={"limit": 2, "early_abort": False}))
    fake_study(tmp_path, path, trials=2)
    study = load(tmp_path)
    assert study.best_trials == []
    assert all(t.constraints["latency_p95_ms"] > 0 for t in study.trials)
    assert [t.user_attrs["metrics"]["requests_measured"] for t in study.trials] == [2, 2]  # no early abort
    _, _, children = runs_of(tmp_path)
    assert {c.data.tags["pareto"] for c in children} == {"false"}
    assert {c.data.tags["feasible"] for c in children} == {"false"}


def test_trial_that_cannot_meet_its_constraint_stops_early(tmp_path, write_config):
    # Prose for the 3rd request on: with schema_valid_rate >= 0.9 over 6 requests, the first invalid answer ends it.
    answers = iter([None, None] + ["I will do that."] * 10)
    backend = FakeBackend(lambda messages, settings: next(answers) or RIGHT(messages, settings))
    space = {"few_shot": 0, "format": "off", "prompt_variant": "minimal", "num_predict": 32}
    path = write_config(smoke_config(search_space=space, constraints={"schema_valid_rate": {"min": 0.9}},
                                     evaluation={"limit": 6}, engine={"warmup_requests": 0}))
    fake_study(tmp_path, path, trials=1, backend=backend)
    trial = load(tmp_path).trials[0]
    assert trial.user_attrs["metrics"]["requests_measured"] == 3
    client, _, children = runs_of(tmp_path)
    frame = table(client, children[0].info.run_id, "requests.json", tmp_path / "dl")
    assert list(frame["schema_valid"]) == [True, True, False]  # stopped at the first miss
    assert trial.constraints["schema_valid_rate"] == pytest.approx(0.9 - 5 / 6)
    assert trial.user_attrs["aborted"].startswith("stopped after 3 of 6 requests: schema_valid_rate >= 0.9")
    assert children[0].data.tags["aborted"] == trial.user_attrs["aborted"]
    assert children[0].data.tags["feasible"] == "false" and load(tmp_path).best_trials == []
    assert children[0].data.metrics["schema_valid_rate_ci95_high"] <= 1.0


def test_setting_that_cannot_fit_is_reported_infeasible_not_run(tmp_path, write_config):
    space = {"num_ctx": 256, "num_predict": 160, "prompt_variant": "verbose", "few_shot": 5}
    path = write_config(smoke_config(search_space=space))
    backend = FakeBackend(RIGHT)
    fake_study(tmp_path, path, trials=1, backend=backend)
    trial = load(tmp_path).trials[0]
    assert trial.state == optuna.trial.TrialState.COMPLETE and trial.constraints["context_fit"] > 0
    assert "does not fit num_ctx 256" in trial.user_attrs["infeasible"]
    client, _, children = runs_of(tmp_path)
    assert children[0].data.tags["infeasible"] == trial.user_attrs["infeasible"]
    assert client.list_artifacts(children[0].info.run_id) == []  # no request ran
    assert backend.calls == []


def test_repeated_settings_are_reused_and_an_exhausted_space_ends_the_study(tmp_path, write_config):
    space = {"num_predict": 32, "few_shot": {"choices": [0, 2]}, "prompt_variant": "minimal", "format": "off"}
    path = write_config(smoke_config(search_space=space, evaluation={"limit": 2}))
    report = fake_study(tmp_path, path, trials=4)
    assert report.new_trials == 2
    study = load(tmp_path)
    measured = [t for t in study.trials if "same_as" not in t.user_attrs]
    assert sorted(t.params["few_shot"] for t in measured) == [0, 2]  # each setting measured once
    assert all("same_as" in t.user_attrs for t in study.trials[-REUSE_LIMIT:]) and study.user_attrs["target"] == 2
    _, _, children = runs_of(tmp_path)
    assert len(children) == 2  # a reused trial has no MLflow run


# -- on the bundled model ------------------------------------------------------------------------------------

def run(tmp_path: Path, *args: str) -> int:
    return main(["study", "--tracking-uri", f"sqlite:///{tmp_path}/mlflow.db", *args])


@pytest.mark.slow
def test_a_real_study_from_the_command_line(tmp_path, capsys):
    assert run(tmp_path, "--config", str(ROOT / "configs/smoke.yaml"), "--trials", "2") == 0
    out = capsys.readouterr()
    assert "Pareto front of study 'smoke'" in out.out and "Warning" not in out.err  # no library warnings
    client, parents, children = runs_of(tmp_path)
    assert len(children) == 2
    for child in children:
        m, t = child.data.metrics, child.data.tags
        assert 0 < m["latency_p50_ms"] <= m["latency_p95_ms"] <= m["latency_p99_ms"] < 60_000
        assert 0 < m["ttft_p50_ms"] <= m["ttft_p95_ms"] and m["ttft_p50_ms"] < m["latency_p99_ms"]
        assert m["prefill_ms_mean"] > 0 and m["decode_ms_mean"] > 0 and m["decode_tokens_per_s"] > 1
        assert m["prompt_tokens_engine"] > 0 and m["prompt_tokens_estimated"] > 0
        assert m["failed_requests"] == 0 and 0 <= m["truncated_answers"] <= 3
        assert t["model"] == "SmolLM2-135M-Instruct.Q4_1.gguf" and len(t["model_sha256"]) == 64
        for tag in ("engine", "engine_version", "cpu", "threads", "package_version", "git_commit"):
            assert t[tag]
    loads = sorted(c.data.metrics["model_loads"] for c in children)
    assert loads == [0.0, 1.0]  # num_ctx is fixed: one load for the whole study
    assert max(c.data.metrics["model_load_ms"] for c in children) > 0


@pytest.mark.slow
@pytest.mark.parametrize("job, limit", [("tickets", "4"), ("invoices", "2")])
def test_a_real_two_trial_study_on_each_new_experiment(tmp_path, job, limit, capsys):
    assert run(tmp_path, "--config", str(ROOT / "configs" / f"{job}.yaml"), "--trials", "2", "--limit", limit) == 0
    assert f"Pareto front of study '{job}'" in capsys.readouterr().out
    client, parents, children = runs_of(tmp_path, job)
    assert len(parents) == 1 and len(children) == 2
    experiment = load_experiment(ROOT / "experiments" / job)
    for child in children:
        metrics = child.data.metrics
        # the job's own fields, not another job's
        assert {f"field_accuracy.{p}".replace("*", "-") for p in experiment.field_paths} <= set(metrics)
        assert ("label_accuracy" in metrics) is (experiment.label is not None)
        assert not any("action" in name for name in metrics)
        assert 0 <= metrics["field_accuracy"] <= 1 and metrics["latency_p95_ms"] > 0


@pytest.mark.slow
def test_mlflow_run_entry_point(tmp_path):
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path}/mlflow.db"}
    done = subprocess.run(
        [sys.executable, "-m", "mlflow", "run", str(ROOT), "-e", "study", "--env-manager", "local",
         "--experiment-name", "smoke", "-P", "config=configs/smoke.yaml", "-P", "trials=2"],
        env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    _, parents, children = runs_of(tmp_path)
    assert len(parents) == 1 and len(children) == 2
    parent = parents[0]
    assert parent.data.params["trials"] == "2"  # the run `mlflow run` started is the study's parent
    # parameters left out are the config's own (sampler random, seed 7), not MLproject defaults
    assert parent.data.params["study.sampler"] == "random" and parent.data.params["study.seed"] == "7"
    assert parent.info.status == "FINISHED"
    assert {c.data.tags["mlflow.parentRunId"] for c in children} == {parent.info.run_id}
    assert (tmp_path / "optuna.db").exists()  # the Optuna storage sits next to the MLflow store
