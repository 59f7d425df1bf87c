"""Faults during a study: what the user sees, and what Optuna and MLflow are left with."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import optuna
import pytest
from mlflow import MlflowClient
from optuna.trial import TrialState

from pipeline.commands.cli import main
from pipeline.testing.ollama_double import OllamaDouble
from tests.conftest import ROOT, smoke_config
from tests.processes import Processes, stop
from tests.test_reliability import environment, mlflow_runs, study_command, trials, wait_for

pytestmark = pytest.mark.slow


def test_a_trial_whose_every_request_fails_is_fail_and_the_study_goes_on(engine, tmp_path, write_config):
    with OllamaDouble(engine=engine) as server:
        config = write_config(smoke_config(engine={"backend": "ollama", "ollama_model": "tuned",
                                                   "host": server.url}, study={"batch": 1}))
        server.inject("http_error", count=4, status=500)  # the first trial's warm-up and three requests
        assert main(["study", "--config", str(config), "--trials", "2",
                     "--tracking-uri", f"sqlite:///{tmp_path}/mlflow.db"]) == 0
    states = [t.state for t in trials(f"sqlite:///{tmp_path}/optuna.db")]
    assert states == [TrialState.FAIL, TrialState.COMPLETE, TrialState.COMPLETE]
    parents, children = mlflow_runs(tmp_path)
    failed = [c for c in children if c.info.status == "FAILED"]
    assert len(failed) == 1 and "all 3 requests failed" in failed[0].data.tags["failure"]
    assert parents[0].info.status == "FINISHED"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def mlflow_server(processes: Processes, folder: Path, port: int) -> subprocess.Popen:
    """``mlflow server`` on 127.0.0.1:``port``, healthy; ``processes`` stops it whatever fails."""
    server = processes.start(
        [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", f"sqlite:///{folder}/server.db",
         "--artifacts-destination", str(folder / "server-artifacts"), "--host", "127.0.0.1", "--port", str(port),
         "--workers", "1"],
        cwd=folder, env={**environment(), "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"},
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def healthy() -> bool:
        try:
            return httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    wait_for(healthy, timeout=90, what="mlflow server")
    return server


def test_tracking_server_away_for_a_while(tmp_path, processes):
    port = free_port()
    server = mlflow_server(processes, tmp_path, port)
    uri = f"http://127.0.0.1:{port}"
    command = study_command(tmp_path, "--trials", "3", "--storage", f"sqlite:///{tmp_path}/optuna.db")
    command[command.index("--tracking-uri") + 1] = uri
    study = processes.start(command, cwd=tmp_path, env=environment(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    storage = f"sqlite:///{tmp_path}/optuna.db"
    wait_for(lambda: any(t.state == TrialState.COMPLETE for t in trials(storage)), what="a first trial")
    stop(server)
    time.sleep(6)  # MLflow's client retries with backoff; the study waits instead of failing
    mlflow_server(processes, tmp_path, port)
    _, err = study.communicate(timeout=600)
    assert study.returncode == 0, err[-2000:]
    client = MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name("smoke").experiment_id])
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    assert len(children) == 3 and {r.info.status for r in runs} == {"FINISHED"}
    assert all("schema_valid_rate" in r.data.metrics for r in children)


@pytest.fixture
def tiny_disk(tmp_path):
    """A 96 KiB tmpfs, nearly full: the artifact store runs out of space on the first table it writes."""
    folder = tmp_path / "artifacts"
    folder.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=96k", "tmpfs", str(folder)], check=True)
    try:
        with (folder / "filler").open("wb", buffering=0) as filler:
            with pytest.raises(OSError):  # fill it up to the last byte
                while True:
                    filler.write(b"\0" * 4096)
        yield folder
    finally:
        subprocess.run(["umount", str(folder)], check=True)


def test_disk_full_while_writing_artifacts(tmp_path, tiny_disk, capsys):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    MlflowClient(uri).create_experiment("smoke", artifact_location=tiny_disk.as_uri())
    code = main(["study", "--config", str(ROOT / "configs/smoke.yaml"), "--trials", "3", "--limit", "3",
                 "--tracking-uri", uri])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and "could not write the request table" in err[-1] and "free space" in err[-1]
    study_trials = trials(f"sqlite:///{tmp_path}/optuna.db")
    assert [t.state for t in study_trials] == [TrialState.COMPLETE]  # measured and kept; the study stopped
    parents, children = mlflow_runs(tmp_path)
    assert children[0].info.status == "FINISHED" and "artifact_error" in children[0].data.tags
    assert children[0].data.metrics["schema_valid_rate"] == study_trials[0].user_attrs["metrics"]["schema_valid_rate"]
    assert parents[0].info.status == "FAILED" and "could not write" in parents[0].data.tags["stopped"]
    # with space again, the same command finishes the requested trials
    (tiny_disk / "filler").unlink()
    assert main(["study", "--config", str(ROOT / "configs/smoke.yaml"), "--trials", "3", "--limit", "3",
                 "--tracking-uri", uri]) == 0
    assert [t.state for t in trials(f"sqlite:///{tmp_path}/optuna.db")].count(TrialState.COMPLETE) == 3


def test_optuna_storage_is_never_touched_by_a_failing_tracking_store(tmp_path, monkeypatch, capsys):
    # an unreachable tracking server: the error is one line and the Optuna storage keeps its trials
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")  # MLflow would retry for minutes first
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "0")
    storage = f"sqlite:///{tmp_path}/optuna.db"
    assert main(["study", "--config", str(ROOT / "configs/smoke.yaml"), "--trials", "1", "--limit", "2",
                 "--tracking-uri", f"sqlite:///{tmp_path}/mlflow.db"]) == 0
    before = [(t.number, t.state) for t in optuna.load_study(study_name="smoke", storage=storage).trials]
    code = main(["study", "--config", str(ROOT / "configs/smoke.yaml"), "--trials", "1", "--limit", "2",
                 "--storage", storage, "--tracking-uri", f"http://127.0.0.1:{free_port()}"])
    assert code == 1
    assert "is unavailable" in capsys.readouterr().err.strip().splitlines()[-1]
    after = [(t.number, t.state) for t in optuna.load_study(study_name="smoke", storage=storage).trials]
    assert after[:len(before)] == before
