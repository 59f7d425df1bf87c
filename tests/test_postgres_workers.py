"""Workers on several machines: one Optuna study in PostgreSQL, one MLflow tracking server, an Ollama host each.

The PostgreSQL server is Debian's, on 127.0.0.1 (``.ci/run`` installs it; this fixture starts the cluster if it
is down). The two workers are real processes with their own Ollama servers (the protocol-level double); they
are named like workers on two machines (``PIPELINE_WORKER``), so the only way to notice a dead one is its
heartbeat.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import uuid

import optuna
import pytest
from mlflow import MlflowClient
from optuna.storages import RetryHeartbeatStaleTrialCallback
from optuna.trial import TrialState

from pipeline.testing.ollama_double import OllamaDouble
from tests.conftest import smoke_config
from tests.test_faults import free_port, mlflow_server
from tests.test_reliability import environment, wait_for

pytestmark = pytest.mark.slow


def _psql(sql: str) -> subprocess.CompletedProcess:
    return subprocess.run(["runuser", "-u", "postgres", "--", "psql", "-v", "ON_ERROR_STOP=1", "-qc", sql],
                          capture_output=True, text=True)


@pytest.fixture(scope="module")
def postgres_server():
    if shutil.which("pg_ctlcluster") is None:
        pytest.fail("PostgreSQL is not installed: apt-get install postgresql (.ci/run does)")
    clusters = subprocess.run(["pg_lsclusters", "--no-header"], capture_output=True, text=True).stdout.split()
    if "down" in clusters:
        subprocess.run(["pg_ctlcluster", clusters[0], clusters[1], "start"], check=True)
    if _psql("SELECT 1 FROM pg_roles WHERE rolname = 'tuner'").returncode != 0:
        pytest.fail("cannot run psql as the postgres user")
    _psql("DO $$ BEGIN CREATE ROLE tuner LOGIN PASSWORD 'tuner'; EXCEPTION WHEN duplicate_object THEN NULL; END $$")
    return "127.0.0.1:5432"


@pytest.fixture
def postgres_url(postgres_server):
    name = f"tuner_{uuid.uuid4().hex[:8]}"
    assert _psql(f"CREATE DATABASE {name} OWNER tuner").returncode == 0
    yield f"postgresql+psycopg2://tuner:tuner@{postgres_server}/{name}"
    if not os.environ.get("KEEP_DB"):
        _psql(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def test_two_machines_share_a_study_and_a_dead_workers_trial_is_retried(engine, tmp_path, postgres_url, processes,
                                                                          write_config):
    port = free_port()
    mlflow_server(processes, tmp_path, port)
    config = write_config(smoke_config(study={"name": "fleet", "batch": 1, "heartbeat_interval_s": 1,
                                              "grace_period_s": 4}, evaluation={"limit": 3}))
    with contextlib.ExitStack() as doubles:
        workers = [processes.start(
            [sys.executable, "-m", "pipeline", "study", "--config", str(config), "--trials", "4", "--backend",
             "ollama", "--model", "tuned", "--host", doubles.enter_context(double).url, "--storage", postgres_url,
             "--tracking-uri", f"http://127.0.0.1:{port}"],
            cwd=tmp_path, env={**environment(), "PIPELINE_WORKER": name}, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, text=True)
            for name, double in (("machine-a", OllamaDouble(engine=engine)), ("machine-b", OllamaDouble(threads=1)))]

        def b_is_mid_trial() -> bool:
            try:
                trials = optuna.load_study(study_name="fleet", storage=postgres_url).trials
            except KeyError:
                return False
            return any(t.state == TrialState.RUNNING and t.user_attrs.get("worker") == "machine-b"
                       and "mlflow_run_id" in t.user_attrs for t in trials)

        wait_for(b_is_mid_trial, what="machine-b running a trial")
        workers[1].send_signal(signal.SIGKILL)  # machine-b goes away mid-trial
        workers[1].wait(timeout=30)
        _, err = workers[0].communicate(timeout=600)
        assert workers[0].returncode == 0, err[-3000:]

    study = optuna.load_study(study_name="fleet", storage=postgres_url)
    complete = [t for t in study.trials if t.state == TrialState.COMPLETE and "same_as" not in t.user_attrs]
    failed = [t for t in study.trials if t.state == TrialState.FAIL]
    assert len(complete) == 4 and len({t.number for t in complete}) == 4
    assert len(failed) == 1 and failed[0].user_attrs["worker"] == "machine-b"
    # the retry may be answered from a trial of the same settings that the other machine measured meanwhile
    retried = [t for t in study.trials if t.state == TrialState.COMPLETE
               and RetryHeartbeatStaleTrialCallback.retried_trial_number(t) is not None]
    assert [RetryHeartbeatStaleTrialCallback.retried_trial_number(t) for t in retried] == [failed[0].number]
    assert retried[0].params == failed[0].params and retried[0].user_attrs["worker"] == "machine-a"
    assert not [t for t in study.trials if t.state in (TrialState.RUNNING, TrialState.WAITING)]

    client = MlflowClient(f"http://127.0.0.1:{port}")
    runs = client.search_runs([client.get_experiment_by_name("smoke").experiment_id])
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    assert len(parents) == 1 and {c.data.tags["mlflow.parentRunId"] for c in children} == {parents[0].info.run_id}
    status = {c.data.tags["optuna.trial_number"]: c.info.status for c in children}
    assert status[str(failed[0].number)] == "FAILED"
    assert sorted(v for k, v in status.items() if k != str(failed[0].number)) == ["FINISHED"] * 4
    assert parents[0].info.status == "FINISHED"
