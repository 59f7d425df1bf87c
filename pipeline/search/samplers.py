"""The study's Optuna sampler, chosen by name."""

from __future__ import annotations

import warnings

import optuna

from pipeline.search.config import StudyConfig

__all__ = ["make_sampler"]


def make_sampler(config: StudyConfig, offset: int) -> optuna.samplers.BaseSampler:
    """The study's sampler. TPE is multivariate (one joint model of all settings) with 6 random startup trials:
    of the TPE, NSGA-II and random variants replayed in BENCHMARKS.md, the one that found the most of the true
    front within 10-15% of the grid.

    ``offset`` (the trials the study already has) shifts the seed, so that a resumed random sampler does not
    repeat the settings it tried.
    """
    seed = config.study.seed + offset
    if config.study.sampler == "nsga2":
        return optuna.samplers.NSGAIISampler(seed=seed, population_size=10)
    if config.study.sampler == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    with warnings.catch_warnings():
        # multivariate TPE is marked experimental in Optuna; it is the measured best here (BENCHMARKS.md)
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return optuna.samplers.TPESampler(seed=seed, n_startup_trials=6, multivariate=True)
