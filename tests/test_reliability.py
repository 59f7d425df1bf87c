"""Crash and resume, Ctrl-C, and several workers on one study, with real processes."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import optuna
import pytest
from mlflow import MlflowClient
from optuna.trial import TrialState

from tests.conftest import ROOT
from tests.processes import Processes

pytestmark = pytest.mark.slow


def study_command(folder: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "pipeline", "study", "--config", str(ROOT / "configs/smoke.yaml"), "--limit", "3",
            "--tracking-uri", f"sqlite:///{folder}/mlflow.db", *extra]


def environment() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    env["PYTHONPATH"] = str(ROOT)  # the code under test, whatever is installed
    env["PYTHONFAULTHANDLER"] = "1"  # a worker stopped with SIGABRT prints every thread's stack (see finish)
    env.pop("PIPELINE_WORKER", None)  # each worker names itself on its trials: host and process id
    return env


def _interruptible() -> None:
    # A suite started in the background by a non-interactive shell ignores SIGINT, and a child would inherit
    # that: the worker must take Ctrl-C as a terminal's foreground process does.
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def start(processes: Processes, folder: Path, *extra: str) -> subprocess.Popen:
    """A study worker, stopped by ``processes`` at the end whatever fails."""
    return processes.start(study_command(folder, *extra), cwd=folder, env=environment(), stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, text=True, preexec_fn=_interruptible)


def finish(workers: list[subprocess.Popen], *, timeout: float = 600) -> list[tuple[str, str]]:
    """Each worker's (stdout, stderr) once all have exited, their pipes drained together: a worker left to fill
    its pipe while another is waited for blocks, maybe holding the study lock the other waits for.

    A worker still running after ``timeout`` is stopped with SIGABRT, and the failure shows where every
    worker's threads were.
    """
    with ThreadPoolExecutor(len(workers)) as pool:
        waits = [pool.submit(w.communicate, timeout=timeout) for w in workers]
    if not any(isinstance(w.exception(), subprocess.TimeoutExpired) for w in waits):
        return [w.result() for w in waits]
    for worker in workers:
        if worker.poll() is None:
            worker.send_signal(signal.SIGABRT)
    stacks = [worker.communicate(timeout=60)[1][-4000:] for worker in workers]
    raise AssertionError(f"workers still running after {timeout} s:\n" + "\n---\n".join(stacks))


def wait_for(condition, *, timeout: float = 240.0, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def trials(storage: str, name: str = "smoke") -> list[optuna.trial.FrozenTrial]:
    try:
        return optuna.load_study(study_name=name, storage=storage).trials
    except KeyError:
        return []


def running_with_run(storage: str) -> bool:
    """A trial is mid-way: running, with its MLflow run created (so the kill lands inside a trial)."""
    done = [t for t in trials(storage) if t.state == TrialState.COMPLETE]
    return len(done) >= 1 and any(t.state == TrialState.RUNNING and "mlflow_run_id" in t.user_attrs
                                  for t in trials(storage))


def mlflow_runs(folder: Path):
    client = MlflowClient(f"sqlite:///{folder}/mlflow.db")
    runs = client.search_runs([client.get_experiment_by_name("smoke").experiment_id], max_results=200)
    return ([r for r in runs if "mlflow.parentRunId" not in r.data.tags],
            [r for r in runs if "mlflow.parentRunId" in r.data.tags])


def test_killed_mid_trial_then_the_same_command_resumes(tmp_path, processes):
    storage = f"sqlite:///{tmp_path}/optuna.db"
    first = start(processes, tmp_path, "--trials", "4")
    wait_for(lambda: running_with_run(storage), what="a completed trial and one in progress")
    first.send_signal(signal.SIGKILL)
    first.wait(timeout=30)
    interrupted = next(t for t in trials(storage) if t.state == TrialState.RUNNING)
    completed_before = {t.number for t in trials(storage) if t.state == TrialState.COMPLETE}

    again = subprocess.run(study_command(tmp_path, "--trials", "4"), cwd=tmp_path, env=environment(),
                           capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-2000:]
    assert "resuming study 'smoke'" in again.stderr
    final = {t.number: t for t in trials(storage)}
    assert completed_before <= {n for n, t in final.items() if t.state == TrialState.COMPLETE}
    measured = [t for t in final.values() if t.state == TrialState.COMPLETE and "same_as" not in t.user_attrs]
    assert len(measured) == 4  # the requested total, not 4 more (a reused repeat is not a measurement)
    assert final[interrupted.number].state == TrialState.FAIL
    assert "is gone" in final[interrupted.number].user_attrs["failure"]
    assert not [t for t in final.values() if t.state in (TrialState.RUNNING, TrialState.WAITING)]
    # the interrupted trial's settings ran again
    assert any(t.params == interrupted.params and t.state == TrialState.COMPLETE and t.number > interrupted.number
               for t in final.values())
    parents, children = mlflow_runs(tmp_path)
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    assert {c.data.tags["mlflow.parentRunId"] for c in children} == {parents[0].info.run_id}
    assert not [r for r in parents + children if r.info.status == "RUNNING"]
    by_id = {c.info.run_id: c for c in children}
    lost = by_id[interrupted.user_attrs["mlflow_run_id"]]
    assert lost.info.status == "FAILED" and "is gone" in lost.data.tags["failure"]


def test_ctrl_c_marks_the_running_trial_and_stops(tmp_path, processes):
    storage = f"sqlite:///{tmp_path}/optuna.db"
    worker = start(processes, tmp_path, "--trials", "5", "--limit", "10")  # trials long enough to be caught running
    wait_for(lambda: running_with_run(storage), what="a trial in progress")
    worker.send_signal(signal.SIGINT)
    _, err = worker.communicate(timeout=120)
    assert worker.returncode == 130, err[-2000:]
    assert "interrupted" in err
    states = [t.state for t in trials(storage)]
    assert TrialState.RUNNING not in states and TrialState.FAIL in states
    parents, children = mlflow_runs(tmp_path)
    assert parents[0].info.status == "KILLED"
    assert not [r for r in children if r.info.status == "RUNNING"]
    assert any(r.info.status == "FAILED" and "KeyboardInterrupt" in r.data.tags.get("failure", "") for r in children)


def test_two_workers_share_one_study_on_a_journal_file(tmp_path, processes):
    storage = f"journal://{tmp_path}/study.log"
    # each its share of the cores: two engines spinning on every core can take minutes for a trial of seconds
    threads = str(max(1, (os.cpu_count() or 2) // 2))
    workers = [start(processes, tmp_path, "--trials", "4", "--storage", storage, "--threads", threads)
               for _ in range(2)]
    results = finish(workers)
    for worker, (_, err) in zip(workers, results):
        assert worker.returncode == 0, err[-2000:]
    study = optuna.load_study(study_name="smoke", storage=optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(f"{tmp_path}/study.log")))
    measured = [t for t in study.trials if "same_as" not in t.user_attrs]  # a reused repeat is no measurement
    assert {t.state for t in study.trials} == {TrialState.COMPLETE} and len(measured) == 4
    # Which worker takes which trial is up to the scheduler (one may take all four); what is guaranteed is that
    # each trial was run by one of the two, once, and recorded once.
    names = {f"{socket.gethostname()}:{worker.pid}" for worker in workers}
    assert all(t.user_attrs["worker"] in names for t in measured)
    parents, children = mlflow_runs(tmp_path)
    assert len(parents) == 1 and len(children) == 4
    assert {c.data.tags["mlflow.parentRunId"] for c in children} == {parents[0].info.run_id}
    assert sorted(int(c.data.tags["optuna.trial_number"]) for c in children) == sorted(t.number for t in measured)
    assert sorted(c.info.run_id for c in children) == sorted(t.user_attrs["mlflow_run_id"] for t in measured)
    assert parents[0].info.status == "FINISHED"
