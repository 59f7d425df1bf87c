"""MLflow's private API, fenced: every use of it past its public surface is here.

Read against mlflow 3.17.2 (the version pyproject.toml pins). ``tests/test_private_apis.py`` checks each name
against the installed package, so a release that moves one fails there, by name.
"""

from __future__ import annotations

from typing import Any

from mlflow.entities import Dataset

__all__ = ["READ_AGAINST", "dataset_entity"]

READ_AGAINST = "3.17.2"


def dataset_entity(data: Any) -> Dataset:
    """The tracking entity of an ``mlflow.data`` dataset (``Dataset._to_mlflow_entity``): ``MlflowClient.log_inputs``
    takes entities, and only the fluent ``mlflow.log_input`` converts one publicly, on the active run."""
    return data._to_mlflow_entity()
