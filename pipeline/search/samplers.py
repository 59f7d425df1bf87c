"""The sampler registry: each Optuna sampler a study can use, by name.

Adding a sampler is one entry in :data:`SAMPLERS` (a function from the seed to the sampler); the config and the
command line's ``--sampler`` read the names from here.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable

import optuna

from pipeline.errors import ConfigError, did_you_mean

__all__ = ["SAMPLERS", "make_sampler"]


def _tpe(seed: int) -> optuna.samplers.BaseSampler:
    """Multivariate TPE (one joint model of all settings) with 6 random startup trials: of the TPE, NSGA-II and
    random variants replayed in BENCHMARKS.md, the one that found the most of the true front within 10-15% of the
    grid."""
    with warnings.catch_warnings():
        # multivariate TPE is marked experimental in Optuna; it is the measured best here (BENCHMARKS.md)
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return optuna.samplers.TPESampler(seed=seed, n_startup_trials=6, multivariate=True)


SAMPLERS: dict[str, Callable[[int], optuna.samplers.BaseSampler]] = {
    "tpe": _tpe,
    "nsga2": lambda seed: optuna.samplers.NSGAIISampler(seed=seed, population_size=10),
    "random": lambda seed: optuna.samplers.RandomSampler(seed=seed),
}


def make_sampler(name: str, *, seed: int) -> optuna.samplers.BaseSampler:
    """The sampler called ``name``, seeded. A resumed study passes its seed shifted by the trials it already has,
    so that a random sampler does not repeat the settings it tried.

    Raises:
        ConfigError: no sampler has that name.
    """
    if name not in SAMPLERS:
        raise ConfigError(f"unknown sampler {name!r}.{did_you_mean(name, SAMPLERS)} Known samplers: "
                          f"{', '.join(SAMPLERS)}")
    return SAMPLERS[name](seed)
