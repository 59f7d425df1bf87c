"""Stores written by an earlier release still work: a study resumes in them, ``compare`` and ``promote`` read them.

``tests/fixtures/legacy_stores`` holds the ``optuna.db`` and ``mlflow.db`` (artifacts in ``mlartifacts/``) of a
3-trial smoke study that release 0.1.0 (before the package was split into rooms) wrote on the fake backend
(its README says how). MLflow keeps absolute artifact locations, so the copy's are pointed at the copy.
"""

from __future__ import annotations

import io
import shutil
import sqlite3
from pathlib import Path

import optuna
import pytest
from mlflow import MlflowClient
from rich.console import Console

from pipeline.commands.cli import main
from pipeline.job.experiment import load_experiment
from pipeline.promote.promotion import PromotionPolicy, promote
from pipeline.search.config import load_config
from pipeline.search.prepare import prepare_study
from pipeline.search.study import run_study
from pipeline.testing import FakeBackend, answers_by_request
from tests.conftest import EXPERIMENT, ROOT

FIXTURE = Path(__file__).parent / "fixtures" / "legacy_stores"
WRITTEN_IN = "/tmp/legacy"  # the folder the stores were made in
RIGHT = answers_by_request({e.request: e.expected for e in load_experiment(EXPERIMENT).examples})


def answer(messages, settings) -> str:
    """The fixture's fake backend: right answers with examples, ``{}`` without."""
    return RIGHT(messages, settings) if settings.few_shot else "{}"


@pytest.fixture
def stores(tmp_path: Path) -> Path:
    folder = tmp_path / "stores"
    shutil.copytree(FIXTURE, folder, ignore=shutil.ignore_patterns("README.md"))
    with sqlite3.connect(folder / "mlflow.db") as db:
        db.execute("UPDATE experiments SET artifact_location = replace(artifact_location, ?, ?)",
                   (WRITTEN_IN, str(folder)))
        db.execute("UPDATE runs SET artifact_uri = replace(artifact_uri, ?, ?)", (WRITTEN_IN, str(folder)))
    return folder


def prepared_in(folder: Path):
    config = load_config(ROOT / "configs" / "smoke.yaml")
    return prepare_study(config, tracking_uri=f"sqlite:///{folder}/mlflow.db", backend=FakeBackend(answer))


def test_a_study_resumes_in_stores_of_the_earlier_release(stores):
    client = MlflowClient(f"sqlite:///{stores}/mlflow.db")
    before = {r.info.run_id: r.data.metrics for r in client.search_runs(
        [client.get_experiment_by_name("smoke").experiment_id], max_results=100)}
    report = run_study(prepared_in(stores), trials=2, console=Console(file=io.StringIO()))
    study = optuna.load_study(study_name="smoke", storage=f"sqlite:///{stores}/optuna.db")
    assert len(study.trials) == 5 and report.new_trials == 2
    runs = client.search_runs([client.get_experiment_by_name("smoke").experiment_id], max_results=100)
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    assert len(parents) == 1 and parents[0].info.run_id == study.user_attrs["mlflow_parent_run_id"]
    assert len(runs) == 6
    # the earlier trials' runs are as they were
    assert {r.info.run_id: r.data.metrics for r in runs if r.info.run_id in before
            and "mlflow.parentRunId" in r.data.tags} == {k: v for k, v in before.items() if k != parents[0].info.run_id}


def test_compare_reads_stores_of_the_earlier_release(stores, capsys):
    code = main(["compare", "smoke", "--tracking-uri", f"sqlite:///{stores}/mlflow.db",
                 "--storage", f"sqlite:///{stores}/optuna.db"])
    out = capsys.readouterr().out
    assert code == 0
    assert "front of 'smoke'" in out and "hypervolume" in out


def test_promote_reads_stores_of_the_earlier_release(stores, tmp_path):
    study = optuna.load_study(study_name="smoke", storage=f"sqlite:///{stores}/optuna.db")
    right = next(t.number for t in study.trials if t.params["few_shot"] == 2)
    report = promote(prepared_in(stores), "smoke",
                     PromotionPolicy("trial", trial=right, output=tmp_path / "promoted", repetitions=1))
    assert report.trial == right and report.holdout["field_accuracy"] == 1.0
    assert (tmp_path / "promoted" / "Modelfile").read_text().startswith("# smoke: study smoke, trial")
    version = MlflowClient(f"sqlite:///{stores}/mlflow.db").get_model_version_by_alias("smoke", "champion")
    assert version.version == report.model_version
