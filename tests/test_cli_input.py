"""Bad input on the command line: one line naming the problem, exit code 2, nothing written."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from pipeline.commands.cli import main
from tests.conftest import PROMPTS, files_under, smoke_config


def run_cli(capsys, *args: str) -> tuple[int, str]:
    with pytest.raises(SystemExit) as exited:
        raise SystemExit(main(["study", *args]))
    return exited.value.code, capsys.readouterr().err


def assert_rejected(capsys, tmp_path: Path, args: list[str], message: str) -> None:
    before = files_under(tmp_path)
    code, err = run_cli(capsys, *args)
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert message in lines[0]
    # nothing recorded: no MLflow store, no Optuna storage, no artifacts
    assert files_under(tmp_path) == before


@pytest.mark.parametrize("args, message", [
    (["--trials", "2.5"], "argument --trials: '2.5' is not a whole number"),
    (["--sampler", "grid"], "argument --sampler: 'grid' is not one of tpe, nsga2, random"),
    (["--limit", "-3"], "argument --limit: -3 must be 1 or more"),
    (["--threads", "0"], "argument --threads: 0 must be 1 or more"),
])
def test_bad_command_line_values(capsys, tmp_path, args, message):
    assert_rejected(capsys, tmp_path, args, message)


def test_more_shots_than_the_pool_holds(capsys, tmp_path, write_config):
    path = write_config(smoke_config(search_space={"few_shot": {"low": 0, "high": 40}}))
    assert_rejected(capsys, tmp_path, ["--config", str(path)], "asks for up to 40 examples but")


def test_prompt_folder_without_examples(capsys, tmp_path, write_config):
    prompts = Path(shutil.copytree(PROMPTS, tmp_path / "prompts"))
    (prompts / "examples.jsonl").unlink()
    path = write_config(smoke_config(prompts=str(prompts)))
    assert_rejected(capsys, tmp_path, ["--config", str(path)], "examples.jsonl not found")


def test_front_table_shows_each_headline_value_with_its_interval():
    import pandas as pd
    from rich.console import Console

    from pipeline.render.tables import front_table
    from pipeline.search.fronts import SETTINGS

    front = pd.DataFrame([{"number": 3, "schema_valid_rate": 0.9, "schema_valid_rate_ci95_low": 0.75,
                           "schema_valid_rate_ci95_high": 1.0, "latency_p95_ms": 420.0,
                           "latency_p95_ms_ci95_low": float("nan"), "latency_p95_ms_ci95_high": float("nan")}])
    console = Console(width=200, record=True)
    console.print(front_table(front, "front", settings=SETTINGS))
    text = console.export_text()
    assert "0.9 [0.75, 1]" in text and "│    420 │" in text  # no interval where none was measured
    assert "value [low, high]: 95% bootstrap interval" in " ".join(text.split())


def test_an_error_raised_while_handling_ctrl_c_is_an_interruption(monkeypatch, capsys):
    # Ctrl-C while a store migrates its schema comes out as the store's error about the half-done transaction.
    import pipeline.commands.cli as cli
    from pipeline.commands import init

    def migrate(args, console):
        try:
            raise KeyboardInterrupt
        except KeyboardInterrupt:
            raise RuntimeError("Can't reconnect until invalid transaction is rolled back") from None

    monkeypatch.setattr(init, "run", migrate)
    assert cli.main(["init", "x"]) == 130
    assert capsys.readouterr().err.startswith("interrupted:")
    assert cli._interruption(ValueError("plain")) is False
