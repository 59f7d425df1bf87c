from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
EXPERIMENT = ROOT / "experiments" / "task_api"
PROMPTS = ROOT / "prompts" / "task_api"


@pytest.fixture(autouse=True)
def _isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test runs in its own folder with no MLflow settings inherited from the shell."""
    monkeypatch.chdir(tmp_path)
    for name in ("MLFLOW_TRACKING_URI", "MLFLOW_RUN_ID", "MLFLOW_EXPERIMENT_ID", "MLFLOW_EXPERIMENT_NAME"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def processes():
    """Servers and workers a test starts (``processes.start(command, ...)``), each stopped with its whole process
    group when the test ends, whatever failed."""
    from tests.processes import Processes

    started = Processes()
    try:
        yield started
    finally:
        started.stop_all()


@pytest.fixture(scope="session")
def experiment():
    from pipeline.job.experiment import load_experiment

    return load_experiment(EXPERIMENT).without_traffic()  # as the smoke config measures it


@pytest.fixture(scope="session")
def prompts(experiment):
    from pipeline.job.prompts import load_prompts

    return load_prompts(PROMPTS, experiment)


@pytest.fixture(scope="session")
def engine():
    """One embedded engine on the bundled model for every test that runs it: each load costs time."""
    from pipeline.engines.embedded import EmbeddedBackend

    backend = EmbeddedBackend(threads=2)
    yield backend
    backend.close()


@pytest.fixture(scope="module")
def double(engine):
    """The Ollama double serving the bundled model as ``tuned``, one per test module (modules may define their own)."""
    from pipeline.testing import OllamaDouble

    with OllamaDouble(engine=engine) as server:
        yield server


def smoke_config(**changes: Any) -> dict[str, Any]:
    """The smoke config as a dict, with absolute paths and top-level sections updated by ``changes``."""
    raw = yaml.safe_load((ROOT / "configs" / "smoke.yaml").read_text())
    raw["experiment"] = str(EXPERIMENT)
    raw["prompts"] = str(PROMPTS)
    for key, value in changes.items():
        if isinstance(value, dict) and isinstance(raw.get(key), dict):
            raw[key] = {**raw[key], **value}
        else:
            raw[key] = value
    return raw


@pytest.fixture
def write_config(tmp_path: Path):
    def write(raw: dict[str, Any] | str, name: str = "study.yaml") -> Path:
        path = tmp_path / name
        path.write_text(raw if isinstance(raw, str) else yaml.safe_dump(raw, sort_keys=False))
        return path

    return write


def files_under(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*")}


os.environ.setdefault("MPLBACKEND", "Agg")


def plan(experiment, prompts, backend, **changes: Any):
    """The trial plan a study of ``experiment`` would build (warm-up: the pool's first example), changed."""
    from dataclasses import replace

    from pipeline.measure.runner import TrialPlan
    from pipeline.search.prepare import warmup_example

    base = TrialPlan(prompts=prompts, backend=backend, scorer=experiment.scorer,
                     warmup=warmup_example(experiment, prompts))
    return replace(base, **changes)


# A job that is not the Task API: notes that are read, written or secret (traffic and cache tests).
NOTES_SCHEMA = {"type": "object", "additionalProperties": False, "required": ["op", "note"],
                "properties": {"op": {"enum": ["read", "write", "secret"]}, "note": {"type": "string"}}}
NOTES = [{"id": "r1", "split": "dev", "text": "read note alpha", "expected": {"op": "read", "note": "alpha"}},
         {"id": "w1", "split": "dev", "text": "write note alpha", "expected": {"op": "write", "note": "alpha"}},
         {"id": "s1", "split": "dev", "text": "tell the secret beta", "expected": {"op": "secret", "note": "beta"}},
         {"id": "r2", "split": "holdout", "text": "read note gamma", "expected": {"op": "read", "note": "gamma"}}]
NOTES_EXAMPLES = [{"text": "read note zeta", "answer": {"op": "read", "note": "zeta"}},
                  {"text": "write note eta", "answer": {"op": "write", "note": "eta"}}]


def notes_job(folder: Path, *, traffic: list[dict[str, Any]] | None = None,
              cache: dict[str, Any] | None = None) -> Path:
    """The notes job in ``folder`` (labelled by ``/op``), with its prompts in ``prompts/``, a traffic file and a
    manifest ``cache`` section when given."""
    folder.mkdir(parents=True, exist_ok=True)
    manifest: dict[str, Any] = {"schema": "schema.json", "input": "{text}", "label": "/op",
                                "scoring": {"default": "exact"}}
    if cache is not None:
        manifest["cache"] = cache
    (folder / "experiment.yaml").write_text(yaml.safe_dump(manifest))
    (folder / "schema.json").write_text(json.dumps(NOTES_SCHEMA))
    (folder / "dataset.jsonl").write_text("".join(json.dumps(line) + "\n" for line in NOTES))
    if traffic is not None:
        (folder / "traffic.jsonl").write_text("".join(json.dumps(line) + "\n" for line in traffic))
    prompts = folder / "prompts"
    prompts.mkdir(exist_ok=True)
    (prompts / "plain.txt").write_text("Answer with the operation and the note as JSON.")
    (prompts / "examples.jsonl").write_text("".join(json.dumps(e) + "\n" for e in NOTES_EXAMPLES))
    return folder
