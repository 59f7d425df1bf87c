"""``pipeline diagnose``: today's settings measured without a study, where their time goes named, with the levers
of the search space for it, recorded as one MLflow run."""

from __future__ import annotations

import yaml
from mlflow import MlflowClient

from pipeline.commands.cli import main
from pipeline.promote.diagnose import diagnose
from pipeline.search.config import load_config
from pipeline.search.prepare import prepare_study
from pipeline.testing import FakeBackend
from tests.conftest import smoke_config

# what is served today: the smoke config's baseline (a point of its space); a settings file may be any setting
TODAY = {"num_ctx": 1024, "num_predict": 64, "temperature": 0.0, "top_p": 1.0, "top_k": 40, "few_shot": 2,
         "prompt_variant": "compact", "example_selection": "static", "format": "off"}


def test_a_diagnosis_names_the_bottleneck_its_levers_and_records_a_run(tmp_path, write_config):
    config = write_config(smoke_config(baseline=TODAY, cost={"per_hour": 0.9, "currency": "EUR"}))
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    prepared = prepare_study(load_config(config), tracking_uri=uri, backend=FakeBackend())
    found = diagnose(prepared, "baseline", TODAY, split="dev", limit=3, repetitions=1, experiment_name="diagnose")
    # the fake backend's prompts are long and its answers short: prefill-bound; few_shot and prompt_variant are
    # searched by the smoke config, so they are the levers
    assert found.verdict.kind == "prefill" and found.requests == 3
    assert list(found.levers) == ["few_shot", "prompt_variant"]
    assert found.metrics["prefill_share"] > 0.5 and found.metrics["cost_per_1k_answers"] > 0
    run = MlflowClient(uri).get_run(found.run_id)
    assert run.data.tags["kind"] == "diagnosis" and run.data.tags["bottleneck"] == found.verdict.sentence
    assert run.data.metrics["prefill_share"] == found.metrics["prefill_share"]
    assert run.data.params["num_ctx"] == "1024"


def test_the_command_on_the_embedded_engine_fits_100_columns(tmp_path, write_config, capsys):
    config = write_config(smoke_config(cost={"per_hour": 0.9}))
    today = tmp_path / "today.yaml"
    today.write_text(yaml.safe_dump({**TODAY, "num_ctx": 4096}))
    assert main(["diagnose", "--config", str(config), "--settings", str(today), "--limit", "2",
                 "--tracking-uri", f"sqlite:///{tmp_path}/mlflow.db"]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert all(len(line) <= 100 for line in lines), out
    assert lines[0] == "today: 2 requests" and any(line.startswith("latency ms: p50 ") for line in lines)
    for start in ("where the time goes: prefill ", "memory: peak ", "cost: ", "verdict: ", "diagnosis run "):
        assert any(line.startswith(start) for line in lines), (start, out)
    assert "KV cache 90.0 MiB" in out  # num_ctx 4096 of the bundled model
