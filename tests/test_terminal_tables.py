"""The front as a terminal shows it: legible in 80 and 100 columns with rich's own renderer, no value cut short
(no ellipsis) and no row wrapped over two lines; ``--wide`` keeps the full table."""

from __future__ import annotations

import io

import pandas as pd
import pytest
from rich.console import Console

from pipeline.commands.cli import build_parser
from pipeline.render.tables import front_summary, front_table, setting_text
from pipeline.search.config import load_config
from pipeline.search.fronts import SETTINGS
from pipeline.search.prepare import prepare_study
from pipeline.search.study import run_study
from pipeline.testing import FakeBackend
from tests.conftest import ROOT
from tests.test_golden import answer  # the pinned study's answers: a front with a baseline off it


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    """The default study's config (every setting searched, a baseline) on the fake backend."""
    folder = tmp_path_factory.mktemp("study")
    prepared = prepare_study(load_config(ROOT / "configs" / "task_api.yaml"),
                             tracking_uri=f"sqlite:///{folder}/mlflow.db", backend=FakeBackend(answer))
    return run_study(prepared, trials=14, console=Console(file=io.StringIO()))


def rendered(renderable, width: int) -> str:
    console = Console(file=io.StringIO(), width=width, color_system=None)
    console.print(renderable)
    return console.file.getvalue()


@pytest.mark.parametrize("width", [80, 100])
def test_the_front_fits_the_terminal_without_cutting_or_wrapping(report, width):
    objectives = ["field_accuracy", "latency_p95_ms"]
    text = rendered(front_summary(report.front, "front", settings=SETTINGS, objectives=objectives,
                                  trials=report.trials), width)
    lines = text.splitlines()
    assert "…" not in text and all(len(line) <= width for line in lines)
    varying = [s for s in SETTINGS if s in report.trials and report.trials[s].nunique() > 1]
    assert len(varying) >= 7  # the default space: nearly every setting differs between trials
    shown = pd.concat([report.front, report.trials[report.trials["baseline"]]]).drop_duplicates("number")
    for _, row in shown.iterrows():
        number = str(row["number"])
        # one line of values per point, and its settings whole on one line
        values = [line for line in lines if " [" in line and line.strip().split(" ")[0].split("=")[0] == number]
        assert len(values) == 1, (number, text)
        setting = setting_text(row, varying)
        assert sum(setting in line for line in lines) == 1, (setting, text)
        assert f"{row['field_accuracy']:.3g}" in values[0]
    assert "base" in text and "[low, high]: the 95% interval" in text


def test_the_setting_column_reads_as_the_settings_do():
    row = pd.Series({"num_ctx": 4096, "num_predict": 96, "temperature": 0.2612, "top_p": 0.9, "top_k": 40,
                     "few_shot": 3, "example_selection": "static", "prompt_variant": "minimal", "format": "schema"})
    assert setting_text(row, ["num_ctx", "num_predict", "temperature", "few_shot", "example_selection",
                              "prompt_variant", "format"]) == "ctx=4096 np=96 t=0.26 3×static minimal fmt=schema"
    assert setting_text(row, ["top_p", "top_k", "example_selection"]) == "p=0.90 k=40 3×static"
    assert setting_text(pd.Series({"few_shot": 0, "example_selection": "by_label"}), ["few_shot"]) == "0-shot"


def test_wide_keeps_every_setting_and_metric_as_a_column(report):
    text = rendered(front_table(report.front, "front", settings=SETTINGS, objectives=["field_accuracy"],
                                trials=report.trials), 400)
    header = next(line for line in text.splitlines() if "trial" in line)
    for column in ("ctx", "predict", "temp", "shots", "prompt", "fields", "p95 ms", "valid"):
        assert column in header
    assert build_parser().parse_args(["study", "--wide"]).wide is True
    assert build_parser().parse_args(["compare", "a", "--wide"]).wide is True
    assert build_parser().parse_args(["study"]).wide is False
