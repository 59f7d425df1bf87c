"""Tracking: one MLflow parent run per study, one nested run per trial.

All logging goes through an explicit ``MlflowClient`` and run ids, never the thread-local active run, so that
trials may run on several threads. The parent is, in this order: the run ``mlflow run`` started
(``MLFLOW_RUN_ID``), the run that earlier invocations of the same study used, or a new run.
"""

from __future__ import annotations

import functools
import json
import os
import re
import tempfile
import time
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import mlflow
import pandas as pd
from mlflow import MlflowClient
from mlflow.entities import DatasetInput, InputTag, Metric, Param, RunTag
from mlflow.exceptions import MlflowException
from mlflow.utils.mlflow_tags import (
    MLFLOW_DATASET_CONTEXT,
    MLFLOW_LOGGED_ARTIFACTS,
    MLFLOW_PARENT_RUN_ID,
    MLFLOW_RUN_NOTE,
)

from pipeline.errors import ConfigError, PipelineError
from pipeline.tracking._mlflow import dataset_entity
from pipeline.tracking.locations import sqlite_folder

__all__ = ["ArtifactWriteError", "StudyTracker", "log_batch", "log_comparison", "metric_key", "run_table_reader",
           "start_run"]

# MLflow draws a "Downloading artifacts" bar for every table the tool reads back (three a trial at promotion),
# around the tool's own lines; it reads this variable at each download, so a user who sets it keeps the bars.
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")

_MAX_BATCH = 100  # MLflow's limit of params per log_batch call


class ArtifactWriteError(PipelineError):
    """An artifact could not be written (e.g. the disk is full); the run's metrics are recorded."""


def _unavailable(tracking_uri: str, exc: MlflowException) -> PipelineError:
    return PipelineError(f"MLflow tracking store {tracking_uri} is unavailable ({exc.message.splitlines()[0][:200]}); "
                         "the Optuna storage keeps every finished trial: run the same command again when it is back")


def _store_errors(method: Callable[..., Any]) -> Callable[..., Any]:
    """Report a tracking store that stays unavailable (after MLflow's own retries) as one line."""
    @functools.wraps(method)
    def wrapper(self: StudyTracker, *args: Any, **kwargs: Any) -> Any:
        try:
            return method(self, *args, **kwargs)
        except MlflowException as exc:
            raise _unavailable(self.client.tracking_uri, exc) from exc
        except OSError as exc:
            raise ArtifactWriteError(f"could not write MLflow artifacts ({exc}): free space in the artifact store "
                                     "and run the same command again") from exc
    return wrapper


class StudyTracker:
    """Writes a study to MLflow: the parent run and its trial runs."""

    def __init__(self, client: MlflowClient, parent_run_id: str, experiment_id: str) -> None:
        self.client = client
        self.parent_run_id = parent_run_id
        self.experiment_id = experiment_id

    @classmethod
    def open(cls, *, tracking_uri: str, experiment_name: str, run_name: str,
             resume_run_id: str | None) -> StudyTracker:
        """Find or create the parent run of a study and mark it RUNNING.

        Raises:
            PipelineError: the tracking store cannot be reached.
        """
        mlflow.set_tracking_uri(tracking_uri)
        client = MlflowClient(tracking_uri)
        try:
            launched = os.environ.get("MLFLOW_RUN_ID")
            for run_id in (launched, resume_run_id):
                run = _existing_run(client, run_id)
                if run is not None:
                    client.update_run(run.info.run_id, status="RUNNING")
                    return cls(client, run.info.run_id, run.info.experiment_id)
            experiment_id = _experiment_id(client, experiment_name, tracking_uri)
            run = client.create_run(experiment_id, run_name=run_name, tags={"study": run_name, "kind": "study"})
        except MlflowException as exc:
            raise _unavailable(tracking_uri, exc) from exc
        return cls(client, run.info.run_id, experiment_id)

    def run_url(self) -> str:
        return _run_url(mlflow.get_tracking_uri(), self.experiment_id, self.parent_run_id)

    @_store_errors
    def log_study(self, *, params: Mapping[str, Any], tags: Mapping[str, str], dataset: pd.DataFrame,
                  dataset_name: str, dataset_source: str, split: str, digest: str) -> None:
        """Record what the study is: its definition as params, the environment as tags, the dataset as input."""
        log_batch(self.client, self.parent_run_id, params=params, tags=tags)
        with warnings.catch_warnings():  # a local path matches two equivalent source types; either is right
            warnings.simplefilter("ignore", UserWarning)
            data = mlflow.data.from_pandas(dataset, source=dataset_source, name=dataset_name, digest=digest[:20])
        self.client.log_inputs(self.parent_run_id, datasets=[
            DatasetInput(dataset_entity(data), tags=[InputTag(MLFLOW_DATASET_CONTEXT, split)])])

    @_store_errors
    def start_trial(self, number: int, *, params: Mapping[str, Any], tags: Mapping[str, str]) -> str:
        """Create the nested run of a trial with its settings; return its run id."""
        run = self.client.create_run(
            self.experiment_id, run_name=f"trial-{number:03d}",
            tags={MLFLOW_PARENT_RUN_ID: self.parent_run_id, "optuna.trial_number": str(number), **tags})
        log_batch(self.client, run.info.run_id, params=params)
        return run.info.run_id

    @_store_errors
    def finish_trial(self, run_id: str, *, metrics: Mapping[str, float], tags: Mapping[str, str],
                     tables: Mapping[str, pd.DataFrame] = {}) -> None:
        """Log a finished trial's metrics, tags and tables (artifact file name: table; empty ones skipped), and
        close its run as FINISHED.

        The tables are the files ``MlflowClient.log_table`` writes (JSON, ``split`` orient) and are listed in the
        run's ``mlflow.loggedArtifacts`` tag as it lists them, so the MLflow UI shows them as tables; written
        together in one upload and one batch, they cost a fraction of one ``log_table`` call each (which reads
        the run back and sets its tag on every call).

        Raises:
            ArtifactWriteError: a table could not be written; metrics and tags are recorded and the run is
                closed with an ``artifact_error`` tag.
        """
        tables = {name: table for name, table in tables.items() if not table.empty}
        try:
            if tables:
                with tempfile.TemporaryDirectory() as folder:
                    for name, table in tables.items():
                        table.to_json(Path(folder) / name, orient="split", index=False, date_format="iso")
                    self.client.log_artifacts(run_id, folder)
        except (OSError, MlflowException) as exc:
            reason = getattr(exc, "message", None) or str(exc)
            log_batch(self.client, run_id, metrics=metrics, tags={**tags, "artifact_error": reason[:5000]})
            self.client.set_terminated(run_id, "FINISHED")
            raise ArtifactWriteError(f"could not write the request table of run {run_id} ({reason[:300]}): "
                                     "free space in the artifact store and run the same command again; the "
                                     "trial's metrics are recorded") from exc
        listed = {MLFLOW_LOGGED_ARTIFACTS: json.dumps([{"path": name, "type": "table"} for name in tables])}
        log_batch(self.client, run_id, metrics=metrics, tags={**tags, **(listed if tables else {})})
        self.client.set_terminated(run_id, "FINISHED")

    @_store_errors
    def read_table(self, run_id: str, artifact_file: str) -> pd.DataFrame:
        """A table a trial's run holds (as :meth:`finish_trial` wrote it)."""
        return _read_table(self.client, run_id, artifact_file)

    @_store_errors
    def log_study_series(self, metrics: Mapping[str, float], *, step: int) -> None:
        """Metrics of the parent run at ``step`` of a series (the MLflow UI charts them over the steps)."""
        now = int(time.time() * 1000)
        self.client.log_batch(self.parent_run_id, metrics=[Metric(k, float(v), now, step) for k, v in metrics.items()])

    @_store_errors
    def tag_run(self, run_id: str, tags: Mapping[str, str]) -> None:
        log_batch(self.client, run_id, tags=tags)

    @_store_errors
    def fail_trial(self, run_id: str, reason: str) -> None:
        """Close a trial's run as FAILED, with the reason as a tag."""
        self.client.set_tag(run_id, "failure", reason[:5000])
        self.client.set_terminated(run_id, "FAILED")

    @_store_errors
    def close_failed_runs(self, runs: Mapping[str, str]) -> None:
        """Mark FAILED, with the reason, the runs (run id: why its trial failed) that were left RUNNING (their
        worker died)."""
        for run_id, reason in runs.items():
            run = _existing_run(self.client, run_id)
            if run is not None and run.info.status == "RUNNING":
                self.fail_trial(run_id, reason)

    @_store_errors
    def log_front(self, *, trials: pd.DataFrame, front: pd.DataFrame, plot: Path | None,
                  metrics: Mapping[str, float], pareto: Mapping[str, bool], note: str = "") -> None:
        """Attach the Pareto front to the parent, with ``note`` as its description (what the MLflow UI shows
        under the run's name), and tag every trial run (``pareto``: run id: on the front) ``pareto=true|false``."""
        for run_id, on_front in pareto.items():
            self.client.set_tag(run_id, "pareto", str(bool(on_front)).lower())
        self.client.log_text(self.parent_run_id, trials.to_csv(index=False), "trials.csv")
        self.client.log_text(self.parent_run_id, front.to_csv(index=False), "pareto_front.csv")
        if not front.empty:
            self._replace_table(front, "pareto_front.json")
        if plot is not None:
            self.client.log_artifact(self.parent_run_id, str(plot))
        log_batch(self.client, self.parent_run_id, metrics=metrics,
                  tags={"pareto_trials": ",".join(str(n) for n in front["number"]),
                        **({MLFLOW_RUN_NOTE: note} if note else {})})

    @_store_errors
    def log_parent_table(self, table: pd.DataFrame, artifact_file: str) -> None:
        """Attach a table to the parent run, replacing one of that name (a later run of the study)."""
        self._replace_table(table, artifact_file)

    def _replace_table(self, table: pd.DataFrame, artifact_file: str) -> None:
        # log_table appends to an existing table; a resumed study's front replaces the old one instead.
        existing = {a.path for a in self.client.list_artifacts(self.parent_run_id)}
        if artifact_file in existing:
            self.client.log_text(self.parent_run_id, table.to_json(orient="split", index=False, date_format="iso"),
                                 artifact_file)
        else:
            self.client.log_table(self.parent_run_id, data=table, artifact_file=artifact_file)

    @_store_errors
    def finish(self, status: str = "FINISHED", *, reason: str = "") -> None:
        """Close the parent run; a study that stopped early says why in its ``stopped`` tag."""
        if reason:
            self.client.set_tag(self.parent_run_id, "stopped", reason[:5000])
        self.client.set_terminated(self.parent_run_id, status)

def _read_table(client: MlflowClient, run_id: str, artifact_file: str) -> pd.DataFrame:
    with tempfile.TemporaryDirectory() as folder:
        path = client.download_artifacts(run_id, artifact_file, folder)
        return pd.read_json(path, orient="split", dtype=False)


def run_table_reader(tracking_uri: str, artifact_file: str) -> Callable[[str], pd.DataFrame]:
    """Read ``artifact_file`` (a table :meth:`StudyTracker.finish_trial` wrote) of a run, by its id.

    Raises (when called):
        PipelineError: the tracking store is unavailable.
    """
    client = MlflowClient(tracking_uri)

    def read(run_id: str) -> pd.DataFrame:
        try:
            return _read_table(client, run_id, artifact_file)
        except MlflowException as exc:
            raise _unavailable(tracking_uri, exc) from exc
    return read


def log_batch(client: MlflowClient, run_id: str, *, params: Mapping[str, Any] = {},
              metrics: Mapping[str, float] = {}, tags: Mapping[str, str] = {}) -> None:
    """Log params, metrics and tags in as few calls as MLflow's batch limits allow."""
    now = int(time.time() * 1000)
    param_list = [Param(k, str(v)) for k, v in params.items()]
    metric_list = [Metric(k, float(v), now, 0) for k, v in metrics.items()]
    tag_list = [RunTag(k, str(v)) for k, v in tags.items()]
    for start in range(0, max(len(param_list), len(metric_list), len(tag_list), 1), _MAX_BATCH):
        end = start + _MAX_BATCH
        client.log_batch(run_id, metrics=metric_list[start:end], params=param_list[start:end],
                         tags=tag_list[start:end])


def metric_key(*parts: str) -> str:
    """A metric or param key from free text (study names): MLflow allows only some characters."""
    return ".".join(re.sub(r"[^A-Za-z0-9_\-. ]", "_", part) for part in parts)


def log_comparison(*, tracking_uri: str, experiment_name: str, comparison: Any, fronts: pd.DataFrame,
                   artifacts: list[Path]) -> tuple[str, str]:
    """Record a comparison of studies as one MLflow run.

    Returns:
        The run id and its URL in the MLflow UI.

    Raises:
        PipelineError: the tracking store failed.
    """
    mlflow.set_tracking_uri(tracking_uri)
    client = MlflowClient(tracking_uri)
    names = list(comparison.summary["study"])
    try:
        run_id, experiment_id = _launched_or_new(client, tracking_uri, experiment_name,
                                                 run_name="compare " + " vs ".join(names),
                                                 tags={"kind": "comparison", "studies": ",".join(names)})
        metrics: dict[str, float] = {}
        for row in comparison.summary.itertuples():
            metrics[metric_key("hypervolume", row.study)] = row.hypervolume
            metrics[metric_key("front_size", row.study)] = row.front_size
        for a in names:
            for b in names:
                if a != b:
                    metrics[metric_key("coverage", a, "over", b)] = comparison.coverage.loc[a, b]
        params = {"studies": ",".join(names),
                  "objectives": ",".join(f"{o.metric}:{o.direction}" for o in comparison.objectives),
                  **{metric_key("reference", m): f"{v:.6g}" for m, v in comparison.reference.items()},
                  **{metric_key("ideal", m): f"{v:.6g}" for m, v in comparison.ideal.items()}}
        log_batch(client, run_id, params=params, metrics=metrics)
        client.log_table(run_id, data=comparison.summary, artifact_file="summary.json")
        client.log_table(run_id, data=fronts, artifact_file="fronts.json")
        client.log_text(run_id, comparison.coverage.to_csv(), "coverage.csv")
        for path in artifacts:
            client.log_artifact(run_id, str(path))
        client.set_terminated(run_id, "FINISHED")
    except MlflowException as exc:
        raise PipelineError(f"MLflow tracking store {tracking_uri} failed: {exc.message}") from exc
    return run_id, _run_url(tracking_uri, experiment_id, run_id)


def start_run(tracking_uri: str, *, experiment_name: str, beside_run: str | None, run_name: str,
              tags: Mapping[str, str]) -> tuple[MlflowClient, str]:
    """Start a run in the experiment of ``beside_run`` (a study's parent), else in ``experiment_name``.

    Returns:
        The client and the new run's id.
    """
    mlflow.set_tracking_uri(tracking_uri)
    client = MlflowClient(tracking_uri)
    try:
        beside = _existing_run(client, beside_run)
        run_id, _ = _launched_or_new(client, tracking_uri, experiment_name, run_name=run_name, tags=tags,
                                     experiment_id=beside.info.experiment_id if beside is not None else None)
        return client, run_id
    except MlflowException as exc:
        raise PipelineError(f"MLflow tracking store {tracking_uri} failed: {exc.message}") from exc


def _launched_or_new(client: MlflowClient, tracking_uri: str, experiment_name: str, *, run_name: str,
                     tags: Mapping[str, str], experiment_id: str | None = None) -> tuple[str, str]:
    """The run ``mlflow run`` started (``MLFLOW_RUN_ID``), tagged; else a new run. Returns run and experiment ids."""
    launched = _existing_run(client, os.environ.get("MLFLOW_RUN_ID"))
    if launched is not None:
        log_batch(client, launched.info.run_id, tags={"mlflow.runName": run_name, **tags})
        return launched.info.run_id, launched.info.experiment_id
    experiment_id = experiment_id or _experiment_id(client, experiment_name, tracking_uri)
    return client.create_run(experiment_id, run_name=run_name, tags=dict(tags)).info.run_id, experiment_id


def _run_url(tracking_uri: str, experiment_id: str, run_id: str) -> str:
    prefix = tracking_uri if urlparse(tracking_uri).scheme in ("http", "https") else "http://127.0.0.1:5000"
    return f"{prefix}/#/experiments/{experiment_id}/runs/{run_id}"


def _existing_run(client: MlflowClient, run_id: str | None) -> Any:
    if not run_id:
        return None
    try:
        run = client.get_run(run_id)
    except MlflowException:
        return None
    return run if run.info.lifecycle_stage == "active" else None


def _experiment_id(client: MlflowClient, name: str, tracking_uri: str) -> str:
    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        if experiment.lifecycle_stage != "active":
            raise ConfigError(f"MLflow experiment {name!r} is deleted: restore it (mlflow experiments restore) "
                              "or set tracking.experiment_name to another name")
        return experiment.experiment_id
    folder = sqlite_folder(tracking_uri)
    # Keep artifacts beside a sqlite store instead of in whatever folder the command ran from.
    location = (folder / "mlartifacts").as_uri() if folder is not None else None
    return client.create_experiment(name, artifact_location=location)
