from __future__ import annotations

import ast

import optuna
import pytest

from pipeline.engines.settings import InferenceSettings
from pipeline.search.config import load_config
from pipeline.search.space import suggest
from tests.conftest import ROOT

SPACE = load_config(ROOT / "configs" / "task_api.yaml").search_space


def test_every_suggestion_stays_inside_the_configured_space():
    study = optuna.create_study(directions=["maximize", "minimize"], sampler=optuna.samplers.RandomSampler(seed=1))
    seen = set()
    for _ in range(60):
        trial = study.ask()
        s = suggest(trial, SPACE, seed=5)
        assert s.num_ctx in (512, 1024, 2048, 4096) and s.num_predict in (48, 96, 160, 256)
        assert 0.0 <= s.temperature <= 1.0 and 0.5 <= s.top_p <= 1.0 and 1 <= s.top_k <= 100
        assert isinstance(s.top_k, int) and 0 <= s.few_shot <= 5
        assert s.prompt_variant in ("verbose", "compact", "minimal")
        assert s.example_selection in ("static", "by_label") and s.format in ("off", "json", "schema")
        assert s.seed == 5
        seen.add((s.prompt_variant, s.format))
        study.tell(trial, [0.5, 100.0])
    assert len(seen) == 9  # the sampler reaches every combination of the categorical knobs


def test_fixed_trial_replays_known_params_through_the_same_code():
    params = {"num_ctx": 1024, "num_predict": 96, "temperature": 0.2, "top_p": 0.9, "top_k": 40, "few_shot": 2,
              "prompt_variant": "compact", "example_selection": "by_label", "format": "schema"}
    settings = suggest(optuna.trial.FixedTrial(params), SPACE, seed=3)
    assert settings == InferenceSettings(**params, seed=3)
    assert settings.options() == {"num_ctx": 1024, "num_predict": 96, "temperature": 0.2, "top_p": 0.9,
                                  "top_k": 40, "seed": 3}


def test_fixed_values_are_recorded_as_params():
    space = load_config(ROOT / "configs" / "smoke.yaml").search_space
    study = optuna.create_study(directions=["maximize", "minimize"])
    trial = study.ask()
    suggest(trial, space, seed=0)
    assert trial.params["num_ctx"] == 1024 and trial.params["temperature"] == 0.0
    assert set(trial.params) == set(space)


def test_a_value_outside_the_space_is_rejected_on_replay():
    params = {"num_ctx": 8192, "num_predict": 96, "temperature": 0.2, "top_p": 0.9, "top_k": 40, "few_shot": 2,
              "prompt_variant": "compact", "example_selection": "static", "format": "off"}
    with pytest.raises(ValueError):
        suggest(optuna.trial.FixedTrial(params), SPACE, seed=0)


def test_only_the_space_module_calls_suggest():
    callers = []
    for path in (ROOT / "pipeline").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Attribute) and node.attr.startswith("suggest_"):
                callers.append(path.name)
    assert set(callers) == {"space.py"}
