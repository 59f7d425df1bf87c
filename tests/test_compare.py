from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import optuna
import pytest
from mlflow import MlflowClient

from pipeline.commands.cli import main
from pipeline.errors import InputError
from pipeline.search.compare import compare, coverage, load_fronts, normalized_hypervolume
from tests.conftest import ROOT

OBJECTIVES = "schema_valid_rate:maximize,latency_p95_ms:minimize"


def make_study(storage: str, name: str, points: list[tuple[float, float]], *, objectives: str = OBJECTIVES,
               infeasible: list[tuple[float, float]] = ()) -> None:
    """A finished study as `pipeline study` records it, from (schema_valid_rate, latency_p95_ms) pairs."""
    directions = [item.split(":")[1] for item in objectives.split(",")]
    study = optuna.create_study(study_name=name, storage=storage, directions=directions)
    study.set_user_attr("definition", {"objectives": objectives})
    for values, feasible in [(p, True) for p in points] + [(p, False) for p in infeasible]:
        trial = study.ask()
        trial.suggest_categorical("format", ["schema"])
        trial.set_constraint("latency_p95_ms", -1.0 if feasible else 5.0)
        trial.set_user_attr("metrics", {"schema_valid_rate": values[0], "latency_p95_ms": values[1]})
        study.tell(trial, list(values))


def test_hypervolume_and_coverage_match_a_hand_computation(tmp_path):
    storage = f"sqlite:///{tmp_path}/optuna.db"
    make_study(storage, "a", [(1.0, 600.0), (0.5, 300.0)])
    make_study(storage, "b", [(0.8, 400.0), (0.4, 500.0)], infeasible=[(1.0, 100.0)])
    fronts = load_fronts(["a", "b"], storage)
    assert [len(f.front) for f in fronts] == [2, 1]  # (0.4, 500) is dominated; the infeasible point never counts
    result = compare(fronts)
    # ideal (1.0, 300) and nadir (0.4, 600) over feasible trials; reference = nadir + 10% of the range
    assert result.ideal == {"schema_valid_rate": 1.0, "latency_p95_ms": 300.0}
    assert result.reference == pytest.approx({"schema_valid_rate": 0.34, "latency_p95_ms": 630.0})
    hv = dict(zip(result.summary["study"], result.summary["hypervolume"]))
    # scaled: a -> (0, 300/330) and (0.5/0.66, 0); b -> (0.2/0.66, 100/330)
    a_hv = 1 * (1 - 300 / 330) + (1 - 0.5 / 0.66) * 1 - (1 - 0.5 / 0.66) * (1 - 300 / 330)
    b_hv = (1 - 0.2 / 0.66) * (1 - 100 / 330)
    assert hv["a"] == pytest.approx(a_hv) and hv["b"] == pytest.approx(b_hv)
    assert result.coverage.loc["a", "b"] == 0.0 and result.coverage.loc["b", "a"] == 0.0


def test_coverage_counts_weak_domination():
    a = np.array([[0.0, 1.0], [1.0, 0.0]])
    b = np.array([[0.0, 1.0], [2.0, 2.0], [0.5, 0.5]])
    assert coverage(a, b) == pytest.approx(2 / 3)  # equal point and a dominated point; (0.5, 0.5) is not
    assert coverage(b, a) == pytest.approx(1 / 2)
    assert np.isnan(coverage(a, np.empty((0, 2))))


def test_hypervolume_of_points_outside_the_box_is_zero():
    assert normalized_hypervolume(np.array([[2.0, 2.0]]), np.zeros(2), np.ones(2)) == 0.0
    assert normalized_hypervolume(np.array([[0.0, 0.0]]), np.zeros(2), np.ones(2)) == 1.0


def test_studies_with_other_objectives_are_refused(tmp_path):
    storage = f"sqlite:///{tmp_path}/optuna.db"
    make_study(storage, "a", [(1.0, 600.0)])
    make_study(storage, "c", [(1.0, 600.0)], objectives="label_accuracy:maximize,latency_p95_ms:minimize")
    with pytest.raises(InputError, match="studies 'a' and 'c' have different objectives"):
        load_fronts(["a", "c"], storage)
    with pytest.raises(InputError, match=r"no study 'zz' in .*\(studies there: a, c\)"):
        load_fronts(["a", "zz"], storage)


@pytest.mark.slow
def test_compare_two_real_studies_logs_a_comparison_run(tmp_path, capsys):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    for name, seed in (("first", "1"), ("second", "2")):
        assert main(["study", "--config", str(ROOT / "configs/smoke.yaml"), "--study-name", name, "--seed", seed,
                     "--trials", "2", "--limit", "2", "--tracking-uri", uri]) == 0
    capsys.readouterr()
    assert main(["compare", "first,second", "--tracking-uri", uri]) == 0
    out = capsys.readouterr().out
    assert "hypervolume" in out and "coverage" in out and "front of 'first'" in out
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("compare")
    (run,) = client.search_runs([experiment.experiment_id])
    assert run.info.status == "FINISHED" and run.data.tags["studies"] == "first,second"
    for name in ("first", "second"):
        assert 0.0 <= run.data.metrics[f"hypervolume.{name}"] <= 1.0
    assert {"coverage.first.over.second", "coverage.second.over.first"} <= set(run.data.metrics)
    names = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"fronts.png", "fronts.html", "summary.json", "fronts.json", "coverage.csv"} <= names
    fronts = json.loads(Path(client.download_artifacts(run.info.run_id, "fronts.json", str(tmp_path))).read_text())
    assert set(row[fronts["columns"].index("study")] for row in fronts["data"]) == {"first", "second"}
    html = Path(client.download_artifacts(run.info.run_id, "fronts.html", str(tmp_path))).read_text()
    assert "plotly" in html.lower() and "first front" in html
