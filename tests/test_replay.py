"""The search benchmark's arithmetic on a hand-made table: true front, hypervolume share, early abort in replay."""

from __future__ import annotations

import json
from dataclasses import replace

import optuna
import pandas as pd
import pytest

from benchmarks.common import SCORE_COLUMNS, load
from benchmarks.replay import Replay, Scale, Table, replay
from pipeline.measure.registry import Constraint

FIXED = {"num_predict": 48, "temperature": 0.0, "prompt_variant": "compact", "format": "off"}


def rows(experiment, shots: int, valid: int, latency: float) -> list[dict]:
    """20 dev requests of the setting with ``few_shot=shots``: the first ``valid`` answered exactly (schema-valid,
    every field right), the others empty; all ``latency`` ms. The stored scores claim every answer perfect: a
    replay must score the answers themselves."""
    examples = experiment.split("dev", 20)
    return [{**FIXED, "few_shot": shots, "position": i, "request_id": e.id,
             **{k: 1.0 if k == "field_accuracy" else True for k in SCORE_COLUMNS},
             "latency_ms": latency, "ttft_ms": 1.0, "prefill_ms": 1.0, "decode_ms": 1.0, "decode_tokens": 1,
             "prompt_tokens_estimated": 10, "prompt_tokens_engine": 10, "output_tokens": 1, "truncated": False,
             "failed": False, "answer": json.dumps(e.expected) if i < valid else ""} for i, e in enumerate(examples)]


def grid(experiment) -> pd.DataFrame:
    # A: every answer right at 100 ms; B: half right at 50 ms; C: half right at 200 ms (dominated by B).
    return pd.DataFrame(rows(experiment, 0, 20, 100.0) + rows(experiment, 1, 10, 50.0) +
                        rows(experiment, 2, 10, 200.0))


@pytest.fixture
def table(experiment):
    config = load()
    space = dict(config.search_space)
    for name, value in FIXED.items():
        space[name] = type(space[name])(name, "fixed", choices=(value,))
    space["few_shot"] = type(space["few_shot"])("few_shot", "categorical", choices=(0, 1, 2))
    config = replace(config, search_space=space)
    return Table(config, grid(experiment))


def found(*points: tuple[float, float]) -> Replay:
    return Replay(pd.DataFrame([{"values": list(p), "feasible": True} for p in points]))


def test_true_front_and_hypervolume_share_by_hand(table):
    assert [o.metric for o in table.config.objectives] == ["field_accuracy", "latency_p95_ms"]
    scale = Scale(table)
    assert sorted(k[table.names.index("few_shot")] for k in scale.true_front) == [0, 1]
    # Minimisation points A(-1, 100), B(-0.5, 50); ideal (-1, 50); reference = nadir (-0.5, 200) + 10% of the
    # spread (0.5, 150) = (-0.45, 215). Scaled: A (0, 50/165), B (0.5/0.55, 0).
    a_only = 1 - 50 / 165
    b_only = 1 - 0.5 / 0.55
    union = a_only + b_only - a_only * b_only
    assert scale.true_hypervolume == pytest.approx(union)
    assert scale.share(found((1.0, 100.0)), 1) == pytest.approx(a_only / union)
    assert scale.share(found((0.5, 50.0), (0.5, 200.0)), 2) == pytest.approx(b_only / union)
    assert scale.share(found((1.0, 100.0), (0.5, 50.0)), 2) == pytest.approx(1.0)
    assert scale.share(found((0.5, 50.0), (1.0, 100.0)), 1) == pytest.approx(b_only / union)  # budget: first only


def test_replay_with_early_abort_spends_fewer_requests_on_infeasible_settings(table, experiment):
    strict = Table(replace(table.config, constraints=(Constraint("schema_valid_rate", min=0.9),)), grid(experiment))
    full = replay(strict, optuna.samplers.RandomSampler(seed=1), 6, early_abort=False).trials
    cut = replay(strict, optuna.samplers.RandomSampler(seed=1), 6, early_abort=True).trials
    assert list(full["key"]) == list(cut["key"])  # random search asks the same settings either way
    assert list(full["feasible"]) == list(cut["feasible"])  # and every setting keeps its feasibility
    half_valid = full["key"].map(lambda k: k[strict.names.index("few_shot")] != 0)
    assert (full["requests"] == 20).all()
    # >= 0.9 of 20 allows 2 invalid answers; the first 10 are valid, so the 3rd invalid one is request 13
    assert (cut.loc[half_valid, "requests"] == 13).all() and (cut.loc[~half_valid, "requests"] == 20).all()
