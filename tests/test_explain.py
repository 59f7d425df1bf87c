"""An empty or thin front is explained — which constraint, how close the trials came, what to change — in the
terminal and as the parent run's description; a study names its objectives for Optuna's own tools."""

from __future__ import annotations

import io
import json

import optuna
from mlflow import MlflowClient
from rich.console import Console

from pipeline.commands import study as study_command
from pipeline.commands.cli import build_parser
from pipeline.job.experiment import load_experiment
from pipeline.search.config import load_config
from pipeline.search.prepare import prepare_study
from pipeline.search.study import run_study
from pipeline.testing import FakeBackend, answers_by_request
from tests.conftest import EXPERIMENT, smoke_config

RIGHT = answers_by_request({e.request: e.expected for e in load_experiment(EXPERIMENT).examples})


def run(tmp_path, write_config, answer, **changes):
    config = load_config(write_config(smoke_config(**changes)))
    prepared = prepare_study(config, tracking_uri=f"sqlite:///{tmp_path}/mlflow.db", backend=FakeBackend(answer))
    report = run_study(prepared, trials=3, console=Console(file=io.StringIO()))
    parent = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db").get_run(report.parent_run_id)
    return report, parent


def long_answer(messages, settings) -> str:
    """A right answer with a free-text field long enough that num_predict cuts it (the scaffold's trap)."""
    value = json.loads(RIGHT(messages, settings))
    return json.dumps({**value, "note": "x" * 400}) if isinstance(value, dict) else json.dumps(value)


def test_an_empty_front_says_which_constraint_how_close_and_what_to_change(tmp_path, write_config):
    report, parent = run(tmp_path, write_config, long_answer,
                         constraints={"schema_valid_rate": {"min": 0.9}}, study={"trials": 3, "sampler": "random"})
    assert report.front.empty and len(report.trials) >= 1
    measured = len(report.trials)
    assert report.explanation[0] == f"the front has 0 points: 0 of {measured} measured trials met every constraint"
    broken = next(line for line in report.explanation if line.startswith("schema_valid_rate >= 0.9"))
    assert broken == (f"schema_valid_rate >= 0.9: broken by {measured} of {measured} trials, the closest reached 0; "
                      f"answers were cut at num_predict in {measured} of them: raise num_predict "
                      "(search_space.num_predict)")
    # early abort stopped them: each says after how many requests and why
    stopped = [line for line in report.explanation if line.startswith("trial ")]
    assert len(stopped) == measured and all("cannot be met" in line for line in stopped)
    note = parent.data.tags["mlflow.note.content"]
    assert "a front of 0" in note and f"- {broken}" in note
    out = io.StringIO()
    for line in report.explanation:  # as the command prints them, nothing NaN
        out.write(line)
    assert "nan" not in out.getvalue().lower()


def test_a_front_is_summarised_on_the_parent_run_and_objectives_are_named(tmp_path, write_config):
    report, parent = run(tmp_path, write_config, lambda m, s: RIGHT(m, s) if s.few_shot else "{}")
    assert len(report.front) >= 2 and report.explanation == []
    note = parent.data.tags["mlflow.note.content"]
    assert note.startswith(f"Study **smoke**: {len(report.trials)} measured trials, a front of {len(report.front)}.")
    assert sum(line.startswith("- trial ") for line in note.splitlines()) == len(report.front)
    study = optuna.load_study(study_name="smoke", storage=f"sqlite:///{tmp_path}/optuna.db")
    assert study.metric_names == ["field_accuracy", "latency_p95_ms"]


def test_the_study_command_prints_the_explanation_under_the_front(monkeypatch, capsys, tmp_path, write_config):
    report, _ = run(tmp_path, write_config, long_answer, constraints={"schema_valid_rate": {"min": 0.9}})
    monkeypatch.setattr(study_command, "run_study", lambda *a, **k: report)
    args = build_parser().parse_args(["study", "--config", str(write_config(smoke_config())),
                                      "--tracking-uri", f"sqlite:///{tmp_path}/mlflow.db"])
    monkeypatch.setattr(study_command.options, "prepare", lambda *a: type("P", (), {
        "backend": FakeBackend(), "config": load_config(args.config)})())
    assert study_command.run(args, Console(file=io.StringIO())) == 0
    out = capsys.readouterr().out
    assert "- schema_valid_rate >= 0.9: broken by" in out and "raise num_predict" in out
