"""The search space: the only place that calls ``trial.suggest_*``.

:func:`suggest` turns a trial (a live Optuna trial, or ``optuna.trial.FixedTrial`` when replaying known
params) into :class:`InferenceSettings`. Fixed settings are suggested as one-choice categoricals, so every
trial records every setting as a param.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import optuna

from pipeline.config import ParamSpec

__all__ = ["InferenceSettings", "settings_of", "suggest"]


@dataclass(frozen=True)
class InferenceSettings:
    """One point of the search space. Option names are Ollama's, verbatim."""

    num_ctx: int
    num_predict: int
    temperature: float
    top_p: float
    top_k: int
    few_shot: int
    prompt_variant: str
    example_selection: str
    format: str
    seed: int = 0

    def options(self) -> dict[str, Any]:
        """The Ollama ``options`` of a request made with these settings."""
        return {"num_ctx": self.num_ctx, "num_predict": self.num_predict, "temperature": self.temperature,
                "top_p": self.top_p, "top_k": self.top_k, "seed": self.seed}

    def as_params(self) -> dict[str, Any]:
        return asdict(self)


def suggest(trial: optuna.Trial | optuna.trial.FixedTrial, space: dict[str, ParamSpec], *,
            seed: int) -> InferenceSettings:
    """Suggest one value per setting of ``space``.

    Returns:
        The settings of this trial; ``seed`` is the study's, the same for every trial.
    """
    values = {name: _suggest_one(trial, spec) for name, spec in space.items()}
    return InferenceSettings(**values, seed=seed)


def _suggest_one(trial: optuna.Trial | optuna.trial.FixedTrial, spec: ParamSpec) -> Any:
    if spec.kind in ("fixed", "categorical"):
        return trial.suggest_categorical(spec.name, list(spec.choices))
    if spec.kind == "int":
        return trial.suggest_int(spec.name, int(spec.low), int(spec.high), step=int(spec.step or 1), log=spec.log)
    return trial.suggest_float(spec.name, spec.low, spec.high, step=spec.step, log=spec.log)


def settings_of(values: dict[str, Any], *, seed: int) -> InferenceSettings:
    """The settings a point of the space written out in full stands for (a baseline, a settings file)."""
    return InferenceSettings(**values, seed=seed)
