"""The search space: the only place that calls ``trial.suggest_*``.

:func:`suggest` turns a trial (a live Optuna trial, or ``optuna.trial.FixedTrial`` when replaying known
params) into :class:`InferenceSettings`. Fixed settings are suggested as one-choice categoricals, so every
trial records every setting as a param.
"""

from __future__ import annotations

from typing import Any

import optuna

from pipeline.search.config import ParamSpec
from pipeline.engines.settings import InferenceSettings, settings_of

__all__ = ["suggest"]


def suggest(trial: optuna.Trial | optuna.trial.FixedTrial, space: dict[str, ParamSpec], *,
            seed: int) -> InferenceSettings:
    """Suggest one value per setting of ``space``.

    Returns:
        The settings of this trial; ``seed`` is the study's, the same for every trial.
    """
    return settings_of({name: _suggest_one(trial, spec) for name, spec in space.items()}, seed=seed)


def _suggest_one(trial: optuna.Trial | optuna.trial.FixedTrial, spec: ParamSpec) -> Any:
    if spec.kind in ("fixed", "categorical"):
        return trial.suggest_categorical(spec.name, list(spec.choices))
    if spec.kind == "int":
        return trial.suggest_int(spec.name, int(spec.low), int(spec.high), step=int(spec.step or 1), log=spec.log)
    return trial.suggest_float(spec.name, spec.low, spec.high, step=spec.step, log=spec.log)
