"""The search space: the only place that calls ``trial.suggest_*``.

:func:`suggest` turns a trial (a live Optuna trial, or ``optuna.trial.FixedTrial`` when replaying known
params) into :class:`InferenceSettings`. Fixed settings are suggested as one-choice categoricals, so every
trial records every setting as a param. :func:`replay` sends a known trial's params through the same path.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import optuna

from pipeline.engines.settings import InferenceSettings, settings_of
from pipeline.search.config import ParamSpec

__all__ = ["replay", "suggest"]


def suggest(trial: optuna.Trial | optuna.trial.FixedTrial, space: dict[str, ParamSpec], *,
            seed: int) -> InferenceSettings:
    """Suggest one value per setting of ``space``.

    Returns:
        The settings of this trial; ``seed`` is the study's, the same for every trial.
    """
    return settings_of({name: _suggest_one(trial, spec) for name, spec in space.items()}, seed=seed)


def replay(params: Mapping[str, Any], space: dict[str, ParamSpec], *, seed: int) -> InferenceSettings:
    """The settings of a trial that ran with ``params``, replayed through :func:`suggest` (``FixedTrial``), so that
    a promoted trial is the trial as it ran.

    Returns:
        The settings; ``seed`` is the study's.
    Raises:
        ValueError: ``params`` lacks a setting of ``space`` (a value outside the space is kept, with Optuna's
            warning, as the trial ran with it).
    """
    return suggest(optuna.trial.FixedTrial(dict(params)), space, seed=seed)


def _suggest_one(trial: optuna.Trial | optuna.trial.FixedTrial, spec: ParamSpec) -> Any:
    if spec.kind in ("fixed", "categorical"):
        return trial.suggest_categorical(spec.name, list(spec.choices))
    if spec.kind == "int":
        return trial.suggest_int(spec.name, int(spec.low), int(spec.high), step=int(spec.step or 1), log=spec.log)
    return trial.suggest_float(spec.name, spec.low, spec.high, step=spec.step, log=spec.log)
