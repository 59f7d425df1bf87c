"""The search space: the only place that calls ``trial.suggest_*``.

:func:`suggest` turns a trial (a live Optuna trial, or ``optuna.trial.FixedTrial`` when replaying known
params) into :class:`InferenceSettings`. Fixed settings are suggested as one-choice categoricals, so every
trial records every setting as a param.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import optuna

from pipeline.config import CORE_PARAMETERS, ParamSpec
from pipeline.serving import CONCURRENCY, SERVER_SETTINGS, load_key

__all__ = ["InferenceSettings", "settings_of", "suggest"]


@dataclass(frozen=True)
class InferenceSettings:
    """One point of the search space. Option names are Ollama's, verbatim; ``serving`` holds the optional
    settings the space has (``think``, llama-server's own settings, the load ``concurrency``; pipeline.serving)
    as ``(name, value)`` pairs, in the space's order."""

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
    serving: tuple[tuple[str, Any], ...] = ()

    @property
    def server(self) -> dict[str, Any]:
        """The server's own settings (empty: the server's defaults)."""
        return {name: value for name, value in self.serving if name in SERVER_SETTINGS}

    @property
    def concurrency(self) -> int:
        """How many clients send requests at once (1: one request at a time)."""
        return dict(self.serving).get(CONCURRENCY, 1)

    @property
    def think(self) -> str:
        """Whether the model thinks before it answers (``default``: as the model does by default)."""
        return dict(self.serving).get("think", "default")

    @property
    def load_key(self) -> tuple[Any, ...]:
        """What a server must be (re)started or reloaded for (:func:`pipeline.serving.load_key`)."""
        return load_key(self.num_ctx, self.server)

    def options(self) -> dict[str, Any]:
        """The Ollama ``options`` of a request made with these settings."""
        return {"num_ctx": self.num_ctx, "num_predict": self.num_predict, "temperature": self.temperature,
                "top_p": self.top_p, "top_k": self.top_k, "seed": self.seed}

    def as_params(self) -> dict[str, Any]:
        params = asdict(self)
        return {**{k: v for k, v in params.items() if k != "serving"}, **dict(self.serving)}


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


def settings_of(values: dict[str, Any], *, seed: int) -> InferenceSettings:
    """The settings a point of the space written out in full stands for (a baseline, a settings file)."""
    serving = tuple((name, value) for name, value in values.items() if name not in CORE_PARAMETERS)
    return InferenceSettings(**{name: values[name] for name in CORE_PARAMETERS}, seed=seed, serving=serving)
