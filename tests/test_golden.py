"""A study's records, pinned: the same study on the fake backend writes the same trials and MLflow runs.

``tests/golden/study.json`` holds what a study of the default config (TPE, seed 42, racing on, a baseline,
constraints) writes on the in-memory fake backend, whose answers and timings depend only on the settings: each
trial's state, params, values and user attributes in the Optuna storage, and each MLflow run's name, status,
params, metrics, tags and artifact names. Values that differ between two runs of the same study (run ids, times,
the machine, versions, the git commit) are left out by name below, so that any other change in what a study
records fails this test. Refresh the file only for a change meant to alter the records:
``GOLDEN_UPDATE=1 python -m pytest tests/test_golden.py``.
"""

from __future__ import annotations

import io
import json
import math
import os
from pathlib import Path
from typing import Any

import optuna
from mlflow import MlflowClient
from rich.console import Console

from pipeline.job.experiment import load_experiment
from pipeline.search.config import load_config
from pipeline.search.prepare import prepare_study
from pipeline.search.study import run_study
from pipeline.testing import FakeBackend, answers_by_request
from tests.conftest import EXPERIMENT, ROOT

GOLDEN = Path(__file__).parent / "golden" / "study.json"
TRIALS = 14

# What differs between two runs of one study on one machine, or between machines and commits.
VOLATILE_TAGS = {"git_commit", "package_version", "cpu", "cpu_count", "memory_gb", "os", "python", "host",
                 "mlflow.user", "mlflow.source.name", "mlflow.source.type", "mlflow.source.git.commit",
                 "mlflow.runName", "mlflow.parentRunId", "mlflow.loggedArtifacts", "mlflow.log-model.history",
                 "engine_version", "worker", "optuna_storage", "machine", "optuna_version", "mlflow_version",
                 "llama_cpp_version"}
VOLATILE_TAG_SUFFIXES = ("_run_id", "_at", "_version")
# Throughput is over the wall-clock span of a trial's requests: the only figures the fake backend does not fix.
VOLATILE_METRICS = {"throughput_rps", "output_tokens_per_s", "goodput_rps"}
VOLATILE_ATTRS = {"mlflow_run_id", "mlflow_parent_run_id", "worker", "definition"}

RIGHT = answers_by_request({e.request: e.expected for e in load_experiment(EXPERIMENT).examples})


def answer(messages, settings) -> str:
    """Right with examples; without them, plain text unless the decoding is constrained; the minimal prompt
    loses the answer's details: settings differ in validity and accuracy as well as in speed."""
    right = RIGHT(messages, settings)
    if settings.few_shot == 0 and settings.format == "off":
        return "I would create a task for that."
    if settings.prompt_variant == "minimal":
        value = json.loads(right)
        if isinstance(value, dict) and isinstance(value.get("params"), dict):
            value["params"] = {key: item for key, item in list(value["params"].items())[:1]}
        return json.dumps(value)
    return right


def _number(value: Any) -> Any:
    if isinstance(value, float):
        return None if math.isnan(value) else round(value, 9)
    return value


def _clean(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in sorted(value.items()) if k not in VOLATILE_METRICS}
    if isinstance(value, list | tuple):
        return [_clean(v) for v in value]
    return _number(value)


def _param(text: str) -> str:
    """A run's param as MLflow stores it (a string): a float written to 12 significant digits, since the last
    digit of a sampled value differs between CPUs (numpy's vector kernels)."""
    try:
        number = float(text)
    except ValueError:
        return text
    return text if number.is_integer() or "." not in text else f"{number:.12g}"


def _tags(tags: dict[str, str]) -> dict[str, str]:
    """The tags that do not differ between runs, with the checkout's folder written ``<repo>``."""
    return {k: v.replace(str(ROOT), "<repo>") for k, v in sorted(tags.items())
            if k not in VOLATILE_TAGS and not k.endswith(VOLATILE_TAG_SUFFIXES) and not k.startswith("mlflow.source")}


def study_record(folder: Path) -> dict[str, Any]:
    """Run the pinned study in ``folder`` and return what it recorded, without the volatile values."""
    config = load_config(ROOT / "configs" / "task_api.yaml")
    tracking_uri = f"sqlite:///{folder}/mlflow.db"
    prepared = prepare_study(config, tracking_uri=tracking_uri, backend=FakeBackend(answer))
    run_study(prepared, trials=TRIALS, console=Console(file=io.StringIO(), width=100))
    study = optuna.load_study(study_name="task_api", storage=f"sqlite:///{folder}/optuna.db")
    trials = [{"number": t.number, "state": t.state.name, "params": _clean(t.params), "values": _clean(t.values),
               "user_attrs": _clean({k: v for k, v in t.user_attrs.items() if k not in VOLATILE_ATTRS})}
              for t in study.trials]
    client = MlflowClient(tracking_uri)
    experiment = client.get_experiment_by_name("task_api")
    runs = client.search_runs([experiment.experiment_id], max_results=1000)
    records = []
    for run in runs:
        records.append({
            "name": run.info.run_name, "status": run.info.status,
            "parent": "mlflow.parentRunId" in run.data.tags,
            "params": {k: _param(v) for k, v in sorted(run.data.params.items())},
            "metrics": _clean(run.data.metrics),
            "tags": _tags(run.data.tags),
            "artifacts": sorted(a.path for a in client.list_artifacts(run.info.run_id)),
        })
    records.sort(key=lambda r: (r["parent"], r["name"]))
    return {"study_user_attrs": sorted(k for k in study.user_attrs), "trials": trials, "runs": records}


def test_the_same_study_records_the_same_trials_and_runs(tmp_path):
    record = study_record(tmp_path)
    assert len(record["trials"]) == TRIALS and any(t["state"] == "COMPLETE" for t in record["trials"])
    text = json.dumps(record, indent=1, sort_keys=True) + "\n"
    if os.environ.get("GOLDEN_UPDATE"):
        GOLDEN.parent.mkdir(exist_ok=True)
        GOLDEN.write_text(text)
    expected = json.loads(GOLDEN.read_text())
    for key in ("study_user_attrs", "trials"):
        assert record[key] == expected[key], key
    assert len(record["runs"]) == len(expected["runs"])
    for got, want in zip(record["runs"], expected["runs"]):
        assert got == want, got["name"]
