"""Runs outside a study's tree: a promotion's held-out check (with its bundle and registered model version) and a
``compare-settings`` measurement, each one MLflow run.

:class:`SingleRun` is such a run: started beside a study's parent run (in its experiment) or in a named
experiment (:func:`pipeline.tracking.runs.start_run`), given params, metrics, tables and tags, closed as
FINISHED. :class:`PromotionRun` adds the bundle's files, under :data:`BUNDLE_PATH`, and a new version of a
registered model made from them, with an alias moved to it.

MLflow errors from starting a run and from the Model Registry become :class:`~pipeline.errors.PipelineError`
here; the others are MLflow's own.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, TypeVar

import pandas as pd
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from pipeline.errors import PipelineError
from pipeline.tracking.runs import log_batch, start_run

__all__ = ["BUNDLE_PATH", "PromotionRun", "SingleRun"]

# The artifact folder of a promotion run that holds the bundle; a registered version's source is this folder.
BUNDLE_PATH = "modelfile"

_Run = TypeVar("_Run", bound="SingleRun")


class SingleRun:
    """One MLflow run written through an explicit client and run id (never the thread-local active run)."""

    def __init__(self, client: MlflowClient, run_id: str) -> None:
        self.client = client
        self.run_id = run_id

    @classmethod
    def start(cls: type[_Run], tracking_uri: str, *, experiment_name: str, beside_run: str | None, run_name: str,
              tags: Mapping[str, str]) -> _Run:
        """Start the run: the one ``mlflow run`` launched, else a new one in the experiment of ``beside_run``
        (a study's parent run), else in ``experiment_name``.

        Returns:
            The started run.
        Raises:
            PipelineError: the tracking store failed.
        """
        client, run_id = start_run(tracking_uri, experiment_name=experiment_name, beside_run=beside_run,
                                   run_name=run_name, tags=tags)
        return cls(client, run_id)

    def log(self, *, params: Mapping[str, Any] = {}, metrics: Mapping[str, float] = {}) -> None:
        """Log params and metrics in as few calls as MLflow's batch limits allow."""
        log_batch(self.client, self.run_id, params=params, metrics=metrics)

    def log_table(self, data: pd.DataFrame, artifact_file: str) -> None:
        """Attach a table (``MlflowClient.log_table``: the MLflow UI shows it as a table)."""
        self.client.log_table(self.run_id, data=data, artifact_file=artifact_file)

    def tag(self, key: str, value: str) -> None:
        self.client.set_tag(self.run_id, key, value)

    def tags(self, tags: Mapping[str, str]) -> None:
        log_batch(self.client, self.run_id, tags=tags)

    def finish(self) -> None:
        """Close the run as FINISHED (a refused promotion too: the run did what it was for)."""
        self.client.set_terminated(self.run_id, "FINISHED")


class PromotionRun(SingleRun):
    """The run of a promotion: a :class:`SingleRun` that also holds the bundle and registers it."""

    def log_bundle(self, paths: Iterable[Path]) -> None:
        """Upload the bundle's files, in order, under :data:`BUNDLE_PATH`."""
        for path in paths:
            self.client.log_artifact(self.run_id, str(path), artifact_path=BUNDLE_PATH)

    def register(self, name: str, *, alias: str, description: str, tags: Mapping[str, str]) -> str:
        """Make the bundle (:meth:`log_bundle`) a new version of registered model ``name`` (created with
        ``description`` if missing) and move ``alias`` to it; older versions stay.

        Returns:
            The new version.
        Raises:
            PipelineError: the Model Registry refused a call.
        """
        client = self.client
        try:
            try:
                client.get_registered_model(name)
            except MlflowException:  # not there yet (the registry's only answer for a missing model is an error)
                client.create_registered_model(name, description=description)
            version = client.create_model_version(
                name, source=f"{client.get_run(self.run_id).info.artifact_uri}/{BUNDLE_PATH}", run_id=self.run_id,
                tags=dict(tags))
            client.set_registered_model_alias(name, alias, version.version)
        except MlflowException as exc:
            raise PipelineError(f"the MLflow Model Registry refused the new version of {name!r}: "
                                f"{exc.message}") from exc
        return version.version
