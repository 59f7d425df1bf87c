"""The reports as a terminal shows them — a study's front, a comparison's hypervolumes and coverage, the gain of a
setting over another, the progress lines: legible in 80 and 100 columns with rich's own renderer, no value cut
short (no ellipsis) and no row wrapped over two lines; ``--wide`` keeps the full front table."""

from __future__ import annotations

import io
import re

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
from rich.console import Console

from pipeline.commands import compare as compare_command
from pipeline.commands.cli import build_parser, main
from pipeline.measure.gain import Gain
from pipeline.measure.registry import Objective
from pipeline.render.plots import front_labels, plot_fronts
from pipeline.render.progress import study_progress
from pipeline.render.tables import (
    HEADERS,
    METRIC_COLUMNS,
    coverage_table,
    front_summary,
    front_table,
    gain_table,
    hypervolume_table,
    setting_text,
)
from pipeline.search.config import load_config
from pipeline.search.fronts import SETTINGS
from pipeline.search.prepare import prepare_study
from pipeline.search.study import run_study
from pipeline.testing import FakeBackend
from tests.conftest import ROOT
from tests.test_compare import make_study
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
    # each point's bottleneck, by kind (the fake backend's prompts are long: prefill or decode)
    where = text[text.index("where the time goes: "):]
    assert all(f"{n} " in where for n in shown["number"].astype(str)) and "-bound" in where


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
    varying = [s for s in SETTINGS if s in report.trials and report.trials[s].nunique() > 1]
    assert len(varying) >= 7  # the default space: nearly every setting differs between trials
    metrics = [m for m in dict.fromkeys(["field_accuracy", *METRIC_COLUMNS])
               if m in report.front and not report.front[m].isna().all()]
    wanted = [HEADERS.get(column, column) for column in varying + metrics]
    at = 0
    for column in wanted:  # every varying setting, then every measured metric, as a column in that order
        assert column in header[at:], (column, header)
        at = header.index(column, at) + len(column)
    assert build_parser().parse_args(["study", "--wide"]).wide is True
    assert build_parser().parse_args(["compare", "a", "--wide"]).wide is True
    assert build_parser().parse_args(["study"]).wide is False


def fits(text: str, width: int) -> list[str]:
    """The lines of a rendering, after checking that none is wider than the terminal and no value is cut."""
    lines = text.splitlines()
    assert "…" not in text and all(len(line) <= width for line in lines), text
    return lines


def one_line(lines: list[str], *cells: str) -> None:
    """A row is whole: exactly one line holds every one of its cells, in order, each as a word of its own."""
    pattern = r"(^|\s)" + r"\s+".join(re.escape(c) for c in cells) + r"($|\s)"
    assert sum(bool(re.search(pattern, line)) for line in lines) == 1, (cells, "\n".join(lines))


LONG = ["task_api_seed42_long_name", "task_api_seed43_long_name", "task_api_seed44_long_name"]


def comparison(names: list[str]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """A comparison's summary and coverage as :func:`pipeline.search.compare.compare` makes them; the last study's
    front is empty, so nothing covers it (NaN) and it covers nothing."""
    last = len(names) - 1
    summary = pd.DataFrame([{"study": n, "trials": 40 + i, "feasible": 31 - i, "front_size": 0 if i == last else 5 + i,
                             "hypervolume": 0.0 if i == last else 0.61234 - 0.05 * i, "mlflow_parent_run_id": "x" * 32}
                            for i, n in enumerate(names)])
    coverage = pd.DataFrame(np.nan, index=names, columns=names)
    for i, a in enumerate(names):
        for b in names[:last]:
            if a != b:
                coverage.loc[a, b] = 0.25 if i == 0 else 0.0 if i == last else 0.6
    return summary, coverage


@pytest.mark.parametrize("width", [80, 100])
def test_the_hypervolumes_of_long_named_studies_fit(width):
    summary, _ = comparison(LONG)
    lines = fits(rendered(hypervolume_table(summary, {"schema_valid_rate": 0.34, "latency_p95_ms": 1630.0}),
                          width), width)
    one_line(lines, "study", "trials", "feasible", "front", "hypervolume")
    for row in summary.itertuples():
        one_line(lines, row.study, str(row.trials), str(row.feasible), str(row.front_size), f"{row.hypervolume:.4f}")
    assert "hypervolume (0..1, larger is better)" in lines[0]
    prose = " ".join(" ".join(lines).split())
    assert "reference point: schema_valid_rate=0.34, latency_p95_ms=1630" in prose


@pytest.mark.parametrize("width", [80, 100])
def test_the_coverage_of_long_named_studies_fits_with_lettered_columns(width):
    _, coverage = comparison(LONG)
    lines = fits(rendered(coverage_table(coverage), width), width)
    one_line(lines, "A", "B", "C")
    one_line(lines, "A", LONG[0], "-", "0.25", "-")  # nothing covers C's empty front: "-", not NaN
    one_line(lines, "B", LONG[1], "0.60", "-", "-")
    one_line(lines, "C", LONG[2], "0.00", "0.00", "-")
    assert "nan" not in " ".join(lines).lower()
    assert "the columns are the studies by their rows' letters" in " ".join(" ".join(lines).split())


@pytest.mark.parametrize("width", [80, 100])
def test_the_coverage_of_short_named_studies_is_headed_by_their_names(width):
    names = ["first", "second", "third"]
    lines = fits(rendered(coverage_table(comparison(names)[1]), width), width)
    one_line(lines, *names)
    one_line(lines, "first", "-", "0.25", "-")
    assert "letters" not in " ".join(lines)


def test_many_long_named_studies_are_lettered_rows_and_columns_named_in_the_legend():
    names = [f"task_api_seed{n}_long_name_of_a_study" for n in range(40, 52)]
    letters = "ABCDEFGHIJKL"
    summary, coverage = comparison(names)
    lines = fits(rendered(coverage_table(coverage), 80), 80)
    one_line(lines, *letters)
    one_line(lines, "A", "-", *["0.25"] * 10, "-")
    one_line(lines, "L", *["0.00"] * 11, "-")
    for letter, name in zip(letters, names):
        assert f"{letter}: {name}" in lines
    lines = fits(rendered(hypervolume_table(summary), 80), 80)
    for row in summary.itertuples():
        one_line(lines, row.study, str(row.trials), str(row.feasible), str(row.front_size), f"{row.hypervolume:.4f}")


def test_compare_prints_both_tables_in_80_columns(tmp_path, capsys, monkeypatch):
    storage = f"sqlite:///{tmp_path}/optuna.db"
    for shift, name in enumerate(LONG):
        make_study(storage, name, [(1.0 - 0.1 * shift, 600.0), (0.5, 300.0 + 50 * shift)])
    monkeypatch.setattr(compare_command, "stdout", lambda: Console(width=80, color_system=None))
    assert main(["compare", ",".join(LONG), "--storage", storage,
                 "--tracking-uri", f"sqlite:///{tmp_path}/mlflow.db"]) == 0
    lines = fits(capsys.readouterr().out, 80)
    for name in LONG:
        assert any(line.startswith(f"front of {name!r}") for line in lines)
    for name in LONG:
        one_line(lines, name, "2", "2", "2")  # trials, feasible, front size, then the hypervolume
    one_line(lines, "A", LONG[0], "-", "1.00", "1.00")  # its front dominates the others' everywhere
    one_line(lines, "C", LONG[2], "0.00", "0.00", "-")
    assert "reference point: schema_valid_rate=" in " ".join(" ".join(lines).split())


GAINS = [Gain("latency_p50_ms", "ratio", 812.3456, 578.1234, 0.712, 0.61, 0.83),
         Gain("latency_p95_ms", "ratio", 1234.5678, 1012.3456, 0.8201, 0.7123, 0.9345),
         Gain("field_accuracy", "difference", 0.5123, 0.8333, 0.321, 0.25, 0.41),
         Gain("exact_match_rate", "difference", 0.25, 0.5, -0.125, -0.2501, -0.0123),
         Gain("schema_valid_rate", "difference", 0.9, 1.0, 0.1, 0.0, 0.2),
         Gain("decode_tokens_per_s", "difference", 41.234, 55.678, 14.444, 10.1, 18.9)]
CHANGES = ["×0.712 [0.61, 0.83]", "×0.82 [0.712, 0.934]", "+0.321 [+0.25, +0.41]", "-0.125 [-0.25, -0.0123]",
           "+0.1 [+0, +0.2]", "+14.4 [+10.1, +18.9]"]
VALUES = [("812", "578"), ("1235", "1012"), ("0.512", "0.833"), ("0.25", "0.5"), ("0.9", "1"), ("41.2", "55.7")]


@pytest.mark.parametrize("width", [80, 100])
@pytest.mark.parametrize("names", [("baseline", "candidate"), ("today", "schema"), tuple(LONG[:2])])
def test_the_gain_table_fits(width, names):
    title = f"{names[1]} against {names[0]} (40 holdout requests each, interleaved)"
    lines = fits(rendered(gain_table(GAINS, title, names=names), width), width)
    headers = ("A", "B") if names == tuple(LONG[:2]) else names  # two long names: lettered, named below
    one_line(lines, "metric", *headers, "change")
    for gain, (base, candidate), change in zip(GAINS, VALUES, CHANGES):
        one_line(lines, gain.metric, base, candidate, change)
    prose = " ".join(" ".join(lines).split())
    assert title in prose and "[low, high]: its 95% paired bootstrap interval over the requests" in prose
    assert headers == names or {f"A: {names[0]}", f"B: {names[1]}"} <= set(lines)


@pytest.mark.parametrize("width", [80, 100])
@pytest.mark.parametrize(("trials", "requests", "number"), [(20, 40, 7), (1500, 1200, 12345)])
def test_the_progress_lines_fit(width, trials, requests, number):
    console = Console(file=io.StringIO(), width=width, record=True, force_terminal=False)
    with study_progress(console, trials=trials, requests=requests) as progress:
        for _ in range(3):
            progress.trial_done()
        progress.trial_started(number)
        for _ in range(17):
            progress.request_done()
    lines = fits(console.export_text(), width)
    (done,) = [line for line in lines if line.startswith("trials ")]
    (running,) = [line for line in lines if line.startswith(f"trial {number} requests ")]
    assert re.search(rf" 3/{trials} \d+:\d\d:\d\d eta (\d+:\d\d:\d\d|-:--:--)$", done.rstrip()), done
    assert re.search(rf" 17/{requests} \d+:\d\d:\d\d eta (\d+:\d\d:\d\d|-:--:--)$", running.rstrip()), running


def test_no_empty_or_stale_bar_is_left_on_screen():
    """A run that adds no trials (finals, top-ups) draws no "trials 0/0" bar; a trial's requests bar is there
    while it runs and gone when it ends, all its requests run or not (racing, early abort)."""
    console = Console(file=io.StringIO(), width=100, record=True, force_terminal=False)
    with study_progress(console, trials=0, requests=20) as progress:
        progress.trial_started(16)
        for _ in range(4):
            progress.request_done()
        progress.trial_measured()  # raced after 4 of its 20 requests
    assert console.export_text().strip() == ""
    console = Console(file=io.StringIO(), width=100, record=True, force_terminal=False)
    with study_progress(console, trials=2, requests=20) as progress:
        for number in range(2):
            progress.trial_started(number)
            progress.request_done()
            progress.trial_measured()
            progress.trial_done()
    (line,) = console.export_text().strip().splitlines()
    assert line.startswith("trials ") and " 2/2 " in line


def test_the_study_and_promote_print_no_library_progress_bars(tmp_path, capfd):
    """MLflow's artifact downloads draw no bars around the tool's own lines, and no bar is left half-filled."""
    assert main(["study", "--config", str(ROOT / "configs" / "smoke.yaml"), "--trials", "2",
                 "--tracking-uri", f"sqlite:///{tmp_path}/mlflow.db"]) == 0
    study = capfd.readouterr()
    # the knee with finals (top-ups, no new trials), the held-out check and the bundle check, each kept short
    assert main(["promote", "smoke", "--config", str(ROOT / "configs" / "smoke.yaml"), "--finals-requests", "3",
                 "--repetitions", "1", "--check-requests", "2", "--tracking-uri", f"sqlite:///{tmp_path}/mlflow.db",
                 "--output", str(tmp_path / "out")]) in (0, 1)  # 1: refused, which prints all the same
    promote = capfd.readouterr()
    for text in (study.out + study.err, promote.out + promote.err):
        assert "Downloading artifacts" not in text and "0/0" not in text and "requests 0/" not in text, text
    # the menu: what each policy would promote, the default's row marked, every line within 100 columns
    lines = promote.out.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("what each policy would promote"))
    rows = [line for line in lines[start:start + 10] if line.split()[:1] in (["accuracy"], ["latency"], ["knee"])]
    assert [row.split()[0] for row in rows] == ["accuracy", "latency", "knee"] and "(used)" in rows[0], lines
    assert all(len(line) <= 100 for line in lines[start:start + 10]), lines[start:start + 10]
    check = [line for line in promote.out.splitlines() if line.lstrip().startswith("bundle check")
             or "identical answers required" in line or "decoding varies" in line]
    assert check and all(len(line) <= 100 for line in check), check  # the bundle check's lines fit


def test_a_group_of_tied_points_is_labelled_once(tmp_path, monkeypatch):
    front = pd.DataFrame({"number": [3, 11, 13, 15, 20], "tied_with": ["", "15", "15", "11, 13", ""]})
    assert front_labels(front) == [(0, "#3"), (1, "#11=#13=#15"), (4, "#20")]
    assert front_labels(front.assign(tied_with=["11", "3", "20", "", "13"])) == [
        (0, "#3=#11"), (2, "#13=#20"), (3, "#15")]  # ties link points through others
    trials = front.assign(feasible=True, pareto=True, infeasible_reason="", baseline=[False] * 4 + [True],
                          schema_valid_rate=[0.5, 0.8, 0.81, 0.82, 1.0],
                          latency_p95_ms=[300.0, 400.0, 402.0, 404.0, 700.0])
    figures, close = [], plt.close
    monkeypatch.setattr(plt, "close", lambda figure: (figures.append(figure), close(figure)))
    objectives = (Objective("schema_valid_rate", "maximize"), Objective("latency_p95_ms", "minimize"))
    assert plot_fronts({"a": trials}, objectives, tmp_path / "fronts.png", title="fronts") is not None
    (axes,) = figures[0].axes
    assert sorted(t.get_text() for t in axes.texts) == ["#11=#13=#15", "#20", "#3"]
