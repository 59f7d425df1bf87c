"""A setting measured before is answered from that measurement, not measured again."""

from __future__ import annotations

from dataclasses import replace

import optuna
import pytest

from pipeline.measure.registry import Objective
from pipeline.search.config import load_config
from pipeline.search.fronts import front_trials, measured_trials, trials_frame
from pipeline.search.reuse import reuse_measurement
from pipeline.search.samplers import make_sampler
from pipeline.search.trials import REUSED
from tests.conftest import ROOT

OBJECTIVES = (Objective("schema_valid_rate", "maximize"), Objective("latency_p95_ms", "minimize"))


def ask(study: optuna.Study, params: dict | None = None) -> optuna.Trial:
    if params:
        study.enqueue_trial(params)
    trial = study.ask()
    trial.suggest_categorical("few_shot", [0, 2])
    trial.suggest_categorical("format", ["off", "schema"])
    return trial


def tell(study: optuna.Study, trial: optuna.Trial, values: list[float], violation: float) -> None:
    trial.set_constraint("latency_p95_ms", violation)
    trial.set_user_attr("metrics", {"schema_valid_rate": values[0], "latency_p95_ms": values[1]})
    study.tell(trial, values)


def test_repeat_is_answered_from_the_earlier_trial_and_not_counted():
    study = optuna.create_study(directions=["maximize", "minimize"])
    first = ask(study, {"few_shot": 2, "format": "schema"})
    assert reuse_measurement(study, first) is False  # nothing measured yet
    tell(study, first, [1.0, 500.0], -100.0)
    other = ask(study, {"few_shot": 0, "format": "off"})
    assert reuse_measurement(study, other) is False  # other settings: measured
    tell(study, other, [0.0, 400.0], -200.0)

    repeat = ask(study, {"few_shot": 2, "format": "schema"})
    assert reuse_measurement(study, repeat) is True
    frozen = study.trials[repeat.number]
    assert frozen.state == optuna.trial.TrialState.COMPLETE and frozen.values == [1.0, 500.0]
    assert frozen.constraints == {"latency_p95_ms": -100.0} and frozen.user_attrs[REUSED] == 0
    assert frozen.user_attrs["metrics"]["latency_p95_ms"] == 500.0
    # not a measurement: not counted, not a row, and the front has each setting once
    assert [t.number for t in measured_trials(study)] == [0, 1]
    assert list(trials_frame(study, OBJECTIVES)["number"]) == [0, 1]
    assert sorted(t.number for t in study.best_trials) == [0, 1, 2]
    assert sorted(t.number for t in front_trials(study)) == [0, 1]


@pytest.mark.parametrize("sampler", ["tpe", "random"])
def test_shipped_samplers_repeat_settings_in_a_small_space(sampler):
    """Why reuse matters: in a space of 4 settings, 12 asks repeat; reused, the repeats cost no requests."""
    config = load_config(ROOT / "configs" / "smoke.yaml")
    config = replace(config, study=replace(config.study, sampler=sampler))
    study = optuna.create_study(directions=["maximize", "minimize"],
                                sampler=make_sampler(config.study.sampler, seed=config.study.seed))
    measured = 0
    for _ in range(12):
        trial = ask(study)
        if not reuse_measurement(study, trial):
            measured += 1
            tell(study, trial, [trial.params["few_shot"] / 2, 100.0 * (1 + trial.params["few_shot"])], -1.0)
    assert measured <= 4 and len(measured_trials(study)) == measured
    assert sum(REUSED in t.user_attrs for t in study.trials) == 12 - measured


def test_a_batch_proposing_one_setting_twice_measures_it_once():
    """Two trials of one batch with the same settings: the first measures, the second is answered from it."""
    from pipeline.search.loop import TrialLoop

    config = load_config(ROOT / "configs" / "smoke.yaml")
    study = optuna.create_study(directions=["maximize", "minimize"],
                                sampler=make_sampler(config.study.sampler, seed=config.study.seed))
    same = {"num_predict": 32, "few_shot": 2, "prompt_variant": "compact", "format": "schema"}
    study.enqueue_trial(same)
    study.enqueue_trial(same)
    measured: list[dict] = []

    def evaluate(trial, settings):
        measured.append(dict(trial.params))
        trial.set_user_attr("metrics", {"field_accuracy": 0.5, "latency_p95_ms": 100.0 + len(measured)})
        return [0.5, 100.0 + len(measured)]

    TrialLoop(study, evaluate, config=config, storage_url="").optimize(target=2, batch=2)
    assert [p for p in measured if same.items() <= p.items()] == [measured[0]] and len(measured) == 2
    assert study.trials[1].user_attrs[REUSED] == 0 and len(measured_trials(study)) == 2
