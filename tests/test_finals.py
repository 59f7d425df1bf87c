"""Finals: the knee's finalists (the front and the baseline) measured on more of the dev split, paired, until the
choice is decided against each, or the split is used up."""

from __future__ import annotations

import io

import optuna
import pytest
from mlflow import MlflowClient
from rich.console import Console

from pipeline.job.experiment import load_experiment
from pipeline.promote.choose import choose_trial
from pipeline.promote.promotion import PromotionPolicy
from pipeline.search.config import load_config
from pipeline.search.prepare import prepare_study
from pipeline.search.study import run_study
from pipeline.search.trials import TOPS_UP
from pipeline.testing import FakeBackend, answers_by_request
from tests.conftest import EXPERIMENT, smoke_config

RIGHT = answers_by_request({e.request: e.expected for e in load_experiment(EXPERIMENT).examples})
SPACE = {"num_predict": 64, "few_shot": 2, "format": "off", "prompt_variant": {"choices": ["compact", "minimal",
                                                                                          "verbose"]}}
BASELINE = {"num_ctx": 1024, "num_predict": 64, "temperature": 0.0, "top_p": 1.0, "top_k": 40, "few_shot": 2,
            "prompt_variant": "verbose", "example_selection": "static", "format": "off"}


def knee(objectives):
    return lambda snapshot: choose_trial(snapshot, objectives, PromotionPolicy()).trial.number


def study(tmp_path, write_config, answer, *, finals: int, trials: int = 8):
    config = load_config(write_config(smoke_config(search_space=SPACE, baseline=BASELINE)))
    backend = FakeBackend(answer, per_prompt_char_ms=0.0)
    prepared = prepare_study(config, tracking_uri=f"sqlite:///{tmp_path}/mlflow.db", backend=backend)
    first = run_study(prepared, trials=trials, console=Console(file=io.StringIO()))
    measured = len(first.trials)
    report = run_study(prepared, trials=0, refine=0, choose=knee(config.objectives), finals=finals,
                       console=Console(file=io.StringIO()))
    return first, measured, report


def test_two_settings_that_serve_alike_end_not_decided_with_the_split_used_up(tmp_path, write_config):
    # compact and minimal get the same right answers in the same time: no number of requests tells them apart;
    # the baseline (verbose) answers wrong on every request
    def answer(messages, settings):
        return "{}" if settings.prompt_variant == "verbose" else RIGHT(messages, settings)

    _, _, report = study(tmp_path, write_config, answer, finals=1000)
    finals = report.finals
    assert not finals.decided and len(finals.tied) == 1
    assert finals.summary().startswith(f"not decided: trial {finals.chosen} remains tied with trial "
                                       f"{finals.tied[0]}")
    rivals = {r.number: r for r in finals.rivals}
    served = next(r for r in finals.rivals if r.baseline)
    # the baseline, worse on every request, was decided on the study's own 3 requests and never topped up
    assert served.decided and served.shared == 3 and served.requests == 3
    tied = rivals[finals.tied[0]]
    assert tied.shared == 60 and finals.requests == 60  # the whole dev split, for both
    # the extra requests are trials of their own, on their MLflow runs, and the front is measured on them
    front = report.front.set_index("number")["requests_measured"].to_dict()
    assert front == {0: 3.0, finals.chosen: 60.0, tied.number: 60.0}  # the baseline is on it too: the fastest
    # the front table's ties are the finals' (one rule, paired on the requests two points share): the choice is
    # tied with its tied rival there too, and with nothing the finals decided
    ties = report.front.set_index("number")["tied_with"].to_dict()
    assert ties[finals.chosen] == str(tied.number) and ties[served.number] == ""
    assert set(report.front["ties"]) == {"paired: every difference on their shared requests holds 0"}
    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    runs = client.search_runs([client.get_experiment_by_name("smoke").experiment_id],
                              filter_string="tags.tops_up != ''")
    assert runs and max(r.data.metrics["requests_measured"] for r in runs) == 60
    parent = client.get_run(report.parent_run_id)
    assert parent.data.tags["finals"].startswith("not decided") and parent.data.tags["finals.tied"] == \
        str(finals.tied[0])
    lines = finals.lines()
    assert any("(baseline), decided on 3 shared requests:" in line for line in lines)
    assert any(line.endswith("tied on 60 shared requests:") for line in lines)


def test_finalists_already_decided_spend_nothing_more(tmp_path, write_config):
    # compact answers right; minimal answers "{}" (fast, wrong); verbose (the baseline) wrong and slow
    def answer(messages, settings):
        return {"compact": RIGHT(messages, settings), "minimal": "{}"}.get(settings.prompt_variant,
                                                                         "{}" + " " * 200)

    _, measured, report = study(tmp_path, write_config, answer, finals=1000)
    assert report.finals.decided and report.new_trials == 0 and len(report.trials) == measured
    assert "decided against every rival" in report.finals.summary()


@pytest.mark.parametrize("budget", [0, 5])
def test_the_finals_stop_at_their_budget(tmp_path, write_config, budget):
    def answer(messages, settings):
        return "{}" if settings.prompt_variant == "verbose" else RIGHT(messages, settings)

    _, _, report = study(tmp_path, write_config, answer, finals=budget)
    stored = optuna.load_study(study_name="smoke", storage=report.storage_url)
    added = [t.user_attrs["metrics"]["requests_run"] for t in stored.trials if TOPS_UP in t.user_attrs]
    assert not report.finals.decided and sum(added) <= budget and bool(added) == bool(budget)


def test_promote_holds_the_finals_first_and_chooses_on_their_measurements(tmp_path, write_config):
    from pipeline.promote.promotion import promote

    def answer(messages, settings):
        return "{}" if settings.prompt_variant == "verbose" else RIGHT(messages, settings)

    config = load_config(write_config(smoke_config(search_space=SPACE, baseline=BASELINE)))
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    prepared = prepare_study(config, tracking_uri=uri, backend=FakeBackend(answer, per_prompt_char_ms=0.0))
    run_study(prepared, trials=8, console=Console(file=io.StringIO()))
    report = promote(prepared, "smoke", PromotionPolicy("knee", repetitions=1, output=tmp_path / "out"),
                     console=Console(file=io.StringIO()))
    assert report.finals is not None and report.trial == report.finals.chosen
    assert report.dev["requests_measured"] == 60  # chosen on the whole dev split, not its first 3 requests
    # still tied with the split used up: by default the policy's own pick stands, and the choice says so
    assert "kept the policy's own pick" in report.choice
    run = MlflowClient(uri).get_run(report.run_id)
    assert run.data.tags["finals"].startswith("not decided")
