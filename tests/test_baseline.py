"""The settings served today: a config's baseline, measured first by a study and side by side by promote and
compare-settings, with the gain's paired intervals."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import optuna
import pytest
import yaml
from mlflow import MlflowClient
from rich.console import Console

from pipeline.commands.cli import main
from pipeline.engines.settings import InferenceSettings
from pipeline.job.experiment import load_experiment
from pipeline.job.scoring import AnswerScore
from pipeline.measure.gain import paired_gain, slower
from pipeline.measure.records import RequestRecord
from pipeline.measure.sidebyside import Arm, interleaving, measure_side_by_side
from pipeline.promote.promotion import PromotionPolicy, PromotionRefused, promote
from pipeline.render.plots import plot_fronts_html
from pipeline.render.tables import front_table
from pipeline.search.config import load_config
from pipeline.search.fronts import SETTINGS
from pipeline.search.prepare import prepare_study
from pipeline.search.study import run_study
from pipeline.search.trials import BASELINE as BASELINE_ATTR
from pipeline.testing import FakeBackend, answers_by_request
from tests.conftest import EXPERIMENT, ROOT, plan, smoke_config

TASK_API = load_experiment(EXPERIMENT)
RIGHT = answers_by_request({e.request: e.expected for e in TASK_API.examples})
# Inside the smoke config's space: 64 tokens, 2 compact examples, no format.
BASELINE = {"num_ctx": 1024, "num_predict": 64, "temperature": 0.0, "top_p": 1.0, "top_k": 40, "few_shot": 2,
            "prompt_variant": "compact", "example_selection": "static", "format": "off"}


def settings(**changes) -> InferenceSettings:
    return InferenceSettings(**{**BASELINE, **changes}, seed=7)


def baseline_config(write_config, **changes) -> Path:
    return write_config(smoke_config(baseline=BASELINE, **changes))


def study_with(tmp_path: Path, config: Path, backend: FakeBackend, trials: int = 3):
    prepared = prepare_study(load_config(config), tracking_uri=f"sqlite:///{tmp_path}/mlflow.db", backend=backend)
    return prepared, run_study(prepared, trials=trials, console=Console(file=io.StringIO()))


def prose_for_the_baseline(messages, settings):
    """Prose when the settings are the baseline's (format off, predict 64): it breaks any validity limit."""
    return "Sure, I can do that." if settings.format == "off" and settings.num_predict == 64 else RIGHT(
        messages, settings)


def test_the_study_measures_the_baseline_first_in_full_and_shows_it(tmp_path, write_config):
    config = baseline_config(write_config, constraints={"schema_valid_rate": {"min": 0.9}})
    prepared, report = study_with(tmp_path, config, FakeBackend(prose_for_the_baseline))
    study = optuna.load_study(study_name="smoke", storage=f"sqlite:///{tmp_path}/optuna.db")
    first = study.trials[0]
    assert first.user_attrs[BASELINE_ATTR] is True and first.params == BASELINE
    # never stopped early, although its first answer already breaks the validity limit
    assert first.user_attrs["metrics"]["requests_measured"] == 3 and "aborted" not in first.user_attrs
    assert first.constraints["schema_valid_rate"] > 0  # infeasible, and still shown
    assert not any(t.user_attrs.get(BASELINE_ATTR) for t in study.trials[1:])
    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    run = client.get_run(first.user_attrs["mlflow_run_id"])
    assert run.data.tags[BASELINE_ATTR] == "true"
    assert list(report.trials["baseline"]) == [True] + [False] * (len(report.trials) - 1)
    console = Console(width=250, record=True)
    console.print(front_table(report.front, "front", settings=SETTINGS, trials=report.trials))
    assert "0 baseline, off the front" in console.export_text()
    plot = plot_fronts_html({"smoke": report.trials}, prepared.config.objectives, tmp_path / "f.html",
                            title="t", settings=("num_ctx", "few_shot"))
    assert "smoke baseline" in plot.read_text()


@pytest.mark.parametrize(("baseline", "message"), [
    ({k: v for k, v in BASELINE.items() if k != "format"}, "(baseline): missing format; give every setting"),
    ({**BASELINE, "temprature": 0.2}, "(baseline): unknown key 'temprature'. Did you mean 'temperature'?"),
    ({**BASELINE, "top_p": 1.5}, "(baseline).top_p: top_p 1.5 is out of range"),
    ({**BASELINE, "num_predict": 128}, "(baseline).num_predict: 128 is not in search_space.num_predict (32, 64); "
                                       "add it"),
    ({**BASELINE, "prompt_variant": "verbos"}, "unknown prompt variant 'verbos'. Did you mean 'verbose'?"),
    ({**BASELINE, "few_shot": 99}, "(baseline).few_shot: 99 examples but"),
])
def test_a_bad_baseline_is_refused_before_anything_is_recorded(tmp_path, write_config, capsys, baseline, message):
    config = write_config(smoke_config(baseline=baseline))
    code = main(["study", "--config", str(config), "--tracking-uri", f"sqlite:///{tmp_path}/mlflow.db"])
    err = capsys.readouterr().err
    assert code == 2 and message in " ".join(err.split()) and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "mlflow.db").exists() and not (tmp_path / "optuna.db").exists()


def test_a_baseline_that_does_not_fit_its_context_is_an_input_error(tmp_path, write_config, capsys):
    space = {"num_ctx": {"choices": [256, 1024]}, "num_predict": {"choices": [32, 200]},
             "prompt_variant": {"choices": ["compact", "verbose"]}}
    config = write_config(smoke_config(search_space=space, baseline={**BASELINE, "num_ctx": 256, "num_predict": 200,
                                                                     "prompt_variant": "verbose", "few_shot": 2}))
    prepared_backend = FakeBackend()
    with pytest.raises(Exception) as caught:
        prepare_study(load_config(config), tracking_uri=f"sqlite:///{tmp_path}/mlflow.db", backend=prepared_backend)
    assert caught.value.exit_code == 2 and "(baseline): on the dev split the prompt of request" in str(caught.value)
    assert "does not fit num_ctx 256" in str(caught.value)


def test_interleaving_alternates_who_goes_first():
    assert interleaving(3) == [(0, 0), (0, 1), (1, 1), (1, 0), (2, 0), (2, 1)]


def test_side_by_side_measures_both_arms_on_their_own_backends_in_that_order(experiment, prompts):
    log: list[tuple[str, str]] = []

    def answering(name):
        def answer(messages, settings):
            log.append((name, messages[-1]["content"]))
            return RIGHT(messages, settings)
        return answer

    a, b = FakeBackend(answering("a")), FakeBackend(answering("b"))
    examples = experiment.split("holdout", 3)
    side = measure_side_by_side(Arm("a", settings(), plan(experiment, prompts, a, warmup_requests=1)),
                                Arm("b", settings(format="schema"), plan(experiment, prompts, b, warmup_requests=1)),
                                examples, repetitions=2)
    warmups = log[:2]  # both contexts loaded and warmed up before the first timed request
    assert [name for name, _ in warmups] == ["a", "b"] and a.loaded == b.loaded == {1024}
    timed = log[2:]
    requests = [e.request for e in examples] * 2
    assert timed == [pair for i, r in enumerate(requests)
                     for pair in ([("a", r), ("b", r)] if i % 2 == 0 else [("b", r), ("a", r)])]
    assert side.order[:4] == [(0, "a"), (0, "b"), (1, "b"), (1, "a")]
    assert [r.request_id for r in side.outcomes["a"].records] == [r.request_id for r in side.outcomes["b"].records]
    assert len(side.outcomes["a"].records) == 6 and b.schemas[-1] == examples[-1].schema.document


def record(i: int, latency: float, *, valid: bool = True, fields: float = 1.0, failed: bool = False) -> RequestRecord:
    return RequestRecord(f"r{i}", "q", None, "", AnswerScore(True, valid, fields == 1.0, fields, None),
                         float("nan") if failed else latency, failed=failed)


def test_paired_gain_on_constructed_records():
    baseline = [record(i, 100.0 + 10 * i, fields=0.5) for i in range(10)]
    # the candidate is 20% faster on every request and right on every field of 6 of them
    candidate = [record(i, 0.8 * (100.0 + 10 * i), fields=1.0 if i < 6 else 0.5) for i in range(10)]
    p50, p95, fields, exact = paired_gain(baseline, candidate, ["field_accuracy", "exact_match_rate"], seed=1)
    assert (p50.kind, p95.kind, fields.kind) == ("ratio", "ratio", "difference")
    assert p50.change == pytest.approx(0.8) and p50.low == pytest.approx(0.8) and p50.high == pytest.approx(0.8)
    assert p95.baseline == pytest.approx(np.percentile([100.0 + 10 * i for i in range(10)], 95))
    assert fields.change == pytest.approx(0.3) and exact.change == pytest.approx(0.6)
    assert 0 < fields.low < 0.3 < fields.high <= 0.5  # resampled requests: 0.05 per right request
    assert fields.decided and p95.decided and not slower([p50, p95])
    # pairing: a slow request is slow for both, so the ratio's interval stays tight where unpaired ones would not
    noisy_base = [record(i, 100.0 * (1 + 9 * (i % 3 == 0))) for i in range(30)]
    noisy_cand = [record(i, 1.1 * r.latency_ms) for i, r in enumerate(noisy_base)]
    ratio = paired_gain(noisy_base, noisy_cand, [], seed=2)[1]
    assert ratio.change == pytest.approx(1.1) and ratio.high - ratio.low < 1e-9
    assert slower([ratio, ratio]).startswith("the candidate is slower than the baseline: p95 ×1.10 [1.10, 1.10]")
    with pytest.raises(ValueError, match="same requests"):
        paired_gain(baseline, candidate[::-1], [])


def test_paired_gain_counts_a_failed_request_as_wrong_and_leaves_it_out_of_latency():
    baseline = [record(i, 100.0) for i in range(4)]
    candidate = [record(0, 50.0), record(1, 50.0), record(2, 50.0), record(3, 0.0, valid=False, fields=0.0,
                                                                            failed=True)]
    p50, _, fields, valid = paired_gain(baseline, candidate, ["field_accuracy", "schema_valid_rate"])
    assert p50.change == pytest.approx(0.5) and fields.change == pytest.approx(-0.25)
    assert valid.change == pytest.approx(-0.25)


@pytest.fixture
def baseline_study(tmp_path, write_config):
    config = baseline_config(write_config, study={"name": "promo", "trials": 2},
                             search_space={"format": {"choices": ["off", "schema"]}, "few_shot": 2,
                                           "prompt_variant": "compact", "num_predict": 64})
    study_with(tmp_path, config, FakeBackend(RIGHT), trials=2)
    return config


def promote_with(tmp_path: Path, config: Path, candidate: FakeBackend, baseline: FakeBackend, **policy):
    prepared = prepare_study(load_config(config), tracking_uri=f"sqlite:///{tmp_path}/mlflow.db", backend=candidate)
    return promote(prepared, "promo", PromotionPolicy("trial", trial=1, repetitions=1, output=tmp_path / "out",
                                                      **policy), baseline_backend=baseline)


def test_promotion_measures_the_gain_over_the_baseline(tmp_path, baseline_study):
    # the candidate answers right, and faster than the baseline's engine on every request
    report = promote_with(tmp_path, baseline_study, FakeBackend(RIGHT), FakeBackend(RIGHT, base_ms=400.0))
    gains = {g.metric: g for g in report.gains}
    assert gains["latency_p95_ms"].change < 1 and gains["latency_p95_ms"].decided
    assert gains["field_accuracy"].change == 0 and report.baseline["field_accuracy"] == 1.0
    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    run = client.get_run(report.run_id)
    assert run.data.tags["promotion"] == "accepted" and "slower_than_baseline" not in run.data.tags
    assert run.data.metrics["gain.latency_p95_ms_ratio"] == gains["latency_p95_ms"].change
    assert "gain.field_accuracy_diff_ci95_low" in run.data.metrics
    assert run.data.params["baseline.prompt_variant"] == "compact"
    side = client.load_table(run.info.experiment_id, "side_by_side.json", run_ids=[run.info.run_id])
    assert list(side["arm"][:4]) == ["baseline", "candidate", "candidate", "baseline"]
    assert len(side) == 2 * 40


def test_promotion_is_refused_below_the_baselines_accuracy_and_says_when_slower(tmp_path, baseline_study):
    wrong = FakeBackend(lambda messages, settings: "{}", base_ms=900.0)
    with pytest.raises(PromotionRefused) as caught:
        promote_with(tmp_path, baseline_study, wrong, FakeBackend(RIGHT))
    assert caught.value.exit_code == 3
    # every answer wrong against every answer right: the whole paired interval far past the margin
    assert "below the baseline's (the settings served today, measured side by side) by more than the margin 0.02: " \
           "-1.000 [-1.000, -1.000], paired" in str(caught.value)
    report = caught.value.report
    assert slower(report.gains).startswith("the candidate is slower than the baseline: p50 ×")
    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    run = client.get_run(report.run_id)
    assert run.data.tags["promotion"] == "refused" and "below the baseline's" in run.data.tags["refused_because"]
    assert run.data.tags["slower_than_baseline"].startswith("the candidate is slower")
    assert not (tmp_path / "out").exists()  # nothing promoted


def test_compare_settings_rejects_bad_settings_files(tmp_path, capsys):
    (tmp_path / "a.yaml").write_text(yaml.safe_dump(BASELINE))
    (tmp_path / "b.yaml").write_text(yaml.safe_dump({**BASELINE, "format": "schemaa"}))
    code = main(["compare-settings", str(tmp_path / "a.yaml"), str(tmp_path / "b.yaml"), "--config",
                 str(ROOT / "configs/smoke.yaml"), "--tracking-uri", f"sqlite:///{tmp_path}/mlflow.db"])
    err = capsys.readouterr().err
    assert code == 2 and "b.yaml.format: 'schemaa' is not one of off, json, schema. Did you mean 'schema'?" in err
    assert not (tmp_path / "mlflow.db").exists()


@pytest.mark.slow
def test_compare_settings_on_the_embedded_engine(tmp_path, capsys):
    today = {**BASELINE, "num_predict": 96, "prompt_variant": "verbose", "few_shot": 3, "temperature": 0.7}
    change = {**today, "format": "schema"}
    (tmp_path / "today.yaml").write_text(yaml.safe_dump(today))
    (tmp_path / "schema.yaml").write_text(yaml.safe_dump(change))
    code = main(["compare-settings", str(tmp_path / "today.yaml"), str(tmp_path / "schema.yaml"), "--config",
                 str(ROOT / "configs/task_api.yaml"), "--limit", "3", "--tracking-uri",
                 f"sqlite:///{tmp_path}/mlflow.db"])
    out = " ".join(capsys.readouterr().out.split())
    assert code == 0, out
    assert "schema against today (3 holdout requests each, interleaved)" in out
    assert "latency_p95_ms" in out and "field_accuracy" in out and "schema_valid_rate" in out
    assert "schema is slower than today" in out or "schema is not slower than today" in out
    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    runs = client.search_runs([client.get_experiment_by_name("compare-settings").experiment_id])
    assert len(runs) == 1 and runs[0].data.params["b.format"] == "schema"
    assert runs[0].data.metrics["b.schema_valid_rate"] == 1.0  # the grammar makes every answer valid
    side = client.load_table(runs[0].info.experiment_id, "side_by_side.json", run_ids=[runs[0].info.run_id])
    assert list(side["arm"]) == ["today", "schema", "schema", "today", "today", "schema"]
    assert json.loads(side["expected"][0])  # the requests and their expected answers are in the table
