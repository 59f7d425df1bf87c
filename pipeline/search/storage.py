"""Optuna storages shared by workers: opening one by URL, a study-wide lock, heartbeats, dead workers' trials.

Storage URLs: any SQLAlchemy URL Optuna's ``RDBStorage`` takes (``sqlite:///optuna.db``,
``postgresql://user:pass@host/db``), or ``journal:///path/to/study.log`` for Optuna's journal file storage
(several processes on one machine, no database server).

Several workers may run one study at once. Whatever must not interleave — creating the study's parent run,
counting what is left to do and asking for trials — happens under :func:`study_lock`: a file lock beside a
sqlite or journal file, a PostgreSQL advisory lock for a database shared by several machines.

A worker that dies leaves its trial RUNNING. Each trial records its worker (``host:pid``); a worker on the same
machine whose process is gone is detected at once. On an RDB storage, workers also send heartbeats, so a trial
whose worker is gone anywhere is failed once its heartbeat is older than the grace period, and Optuna's
``RetryHeartbeatStaleTrialCallback`` queues its settings to run again.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import socket
import threading
import warnings
from collections.abc import Iterator
from functools import lru_cache
from pathlib import Path

import optuna
from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback
from optuna.storages.journal import JournalFileBackend, JournalStorage
from optuna.trial import FrozenTrial, TrialState

from pipeline.search._optuna import storage_of, trial_id
from pipeline.search.trials import RAN_BY

__all__ = ["GRACE_PERIOD_S", "HEARTBEAT_INTERVAL_S", "WORKER", "heartbeat", "heartbeat_helpers", "open_storage",
           "recover_dead_trials", "study_lock", "study_names"]

HEARTBEAT_INTERVAL_S = 10
GRACE_PERIOD_S = 60
MAX_RETRY = 2
# Who runs a trial, recorded on it; PIPELINE_WORKER names a worker explicitly (e.g. per machine in a fleet).
WORKER = os.environ.get("PIPELINE_WORKER") or f"{socket.gethostname()}:{os.getpid()}"
_JOURNAL = "journal://"


@contextlib.contextmanager
def heartbeat_helpers() -> Iterator[None]:
    """Silence what Optuna says about the heartbeat features this module uses on purpose, and nothing else.

    Optuna marks heartbeats, stale-trial failing and the retry callback experimental, and warns that heartbeats
    are "supposed to be used with Study.optimize": a study here asks and tells its trials itself (to group them
    by ``num_ctx`` and reuse repeated settings) and sends heartbeats itself (:func:`heartbeat`).
    """
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning,
                                message=r".*(heartbeat|grace_period|fail_stale_trials|RetryHeartbeatStaleTrialCallback)")
        warnings.filterwarnings("ignore", category=UserWarning,
                                message="Heartbeat of storage is supposed to be used with Study.optimize")
        yield


with heartbeat_helpers():
    _retry = RetryHeartbeatStaleTrialCallback(max_retry=MAX_RETRY)


def open_storage(url: str, *, heartbeat_interval_s: int = HEARTBEAT_INTERVAL_S,
                 grace_period_s: int = GRACE_PERIOD_S) -> optuna.storages.BaseStorage:
    """The Optuna storage behind ``url``, with heartbeats and retry of stale trials where it supports them."""
    if url.startswith(_JOURNAL):
        return JournalStorage(JournalFileBackend(_journal_path(url)))
    with heartbeat_helpers():
        return RDBStorage(url, heartbeat_interval=heartbeat_interval_s, grace_period=grace_period_s,
                          heartbeat_stale_trial_callback=_retry)


def _journal_path(url: str) -> str:
    return url[len(_JOURNAL):]


def _lock_file(url: str) -> Path | None:
    # The storage file itself: flock does not interfere with SQLite's own (fcntl) locks or the journal's.
    if url.startswith(_JOURNAL):
        return Path(_journal_path(url))
    if url.startswith("sqlite:///"):
        return Path(url[len("sqlite:///"):].split("?", 1)[0])
    return None


@lru_cache(maxsize=4)
def _engine(url: str):  # noqa: ANN202 - a SQLAlchemy engine, created once per URL
    import sqlalchemy

    return sqlalchemy.create_engine(url, poolclass=sqlalchemy.pool.NullPool)


@contextlib.contextmanager
def study_lock(url: str, study_name: str) -> Iterator[None]:
    """Hold the lock of one study across all its workers (a no-op for stores without a lock)."""
    path = _lock_file(url)
    if path is not None:
        with path.open("a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)
        return
    if url.startswith(("postgresql", "postgres")):
        import sqlalchemy

        key = int.from_bytes(hashlib.sha256(study_name.encode()).digest()[:8], "big", signed=True)
        with _engine(url).connect() as connection:
            connection.execute(sqlalchemy.text("SELECT pg_advisory_lock(:key)"), {"key": key})
            try:
                yield
            finally:
                connection.execute(sqlalchemy.text("SELECT pg_advisory_unlock(:key)"), {"key": key})
        return
    yield


def _process_gone(worker: str) -> bool:
    host, _, pid = worker.rpartition(":")
    if host != socket.gethostname() or not pid.isdigit():
        return False  # another machine's worker: only its heartbeat can tell
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


def recover_dead_trials(study: optuna.Study) -> list[FrozenTrial]:
    """Fail the RUNNING trials whose worker is gone; return them (now FAIL).

    Raises nothing for a trial another worker fails at the same moment.
    """
    running = {trial_id(t) for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))}
    with heartbeat_helpers():
        optuna.storages.fail_stale_trials(study)  # heartbeats, on storages that keep them
    storage = storage_of(study)
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        worker = trial.user_attrs.get(RAN_BY, "")
        if worker and _process_gone(worker):
            try:
                storage.set_trial_user_attr(trial_id(trial), "failure", f"interrupted: worker {worker} is gone")
                storage.set_trial_state_values(trial_id(trial), state=TrialState.FAIL)
            except (optuna.exceptions.UpdateFinishedTrialError, RuntimeError):
                continue  # another worker got there first
            # As for a stale heartbeat: queue the same settings again, so the interrupted trial is not lost.
            _retry(study, storage.get_trial(trial_id(trial)))
    return [t for t in study.get_trials(deepcopy=False, states=(TrialState.FAIL,)) if trial_id(t) in running]


@contextlib.contextmanager
def heartbeat(study: optuna.Study, trial: optuna.Trial) -> Iterator[None]:
    """Record the trial's heartbeat every interval while it runs, on storages that keep heartbeats."""
    storage = storage_of(study)  # RDBStorage comes wrapped in Optuna's cache, which passes heartbeats through
    interval = storage.get_heartbeat_interval() if hasattr(storage, "record_heartbeat") else None
    if interval is None:
        yield
        return
    stop = threading.Event()

    def beat() -> None:
        while True:
            with contextlib.suppress(Exception):  # a store that is briefly away must not end the trial
                storage.record_heartbeat(trial_id(trial))
            if stop.wait(interval):
                return

    thread = threading.Thread(target=beat, name=f"heartbeat-{trial.number}", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


def study_names(url: str) -> list[str]:
    """The names of the studies in the storage at ``url``."""
    return optuna.get_all_study_names(open_storage(url))
