"""Search efficiency: how much of the true front a study finds within a budget of trials.

``python -m benchmarks search`` replays studies against the measured grid (``benchmarks/data/grid.csv``) with
the default sampler, its variants, NSGA-II and random search, at 10%, 15% and 25% of the grid, over many
seeds, and reports the hypervolume of each found front as a share of the true front's (both on the true
front's normalised reference, as ``pipeline compare`` measures). Twice: with the default objectives
(field accuracy vs p95) and with label accuracy (the right action) vs p95, the harder front.
"""

from __future__ import annotations

import math
import time
import warnings
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import pandas as pd

from benchmarks.common import GRID_CONFIG, GRID_DATA, load, write_result
from benchmarks.replay import Scale, Table, replay
from pipeline.measure.registry import Objective
from pipeline.search.config import StudyConfig
from pipeline.search.samplers import make_sampler

BUDGETS = (0.10, 0.15, 0.25)
TARGET = 0.95


def sampler_variants(config: StudyConfig) -> dict[str, tuple[Any, bool]]:
    """Name → (function of a seed giving a sampler, whether repeated settings are reused). The first is what a
    study does by default."""
    def shipped(name: str):
        return lambda seed: make_sampler(name, seed=seed)

    def tpe(startup: int, multivariate: bool):
        def make(seed: int) -> optuna.samplers.BaseSampler:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                return optuna.samplers.TPESampler(seed=seed, n_startup_trials=startup, multivariate=multivariate)
        return make

    return {
        "tpe multivariate, 6 startup (default)": (shipped("tpe"), True),
        "tpe multivariate, 10 startup": (tpe(10, True), True),
        "tpe independent, 6 startup": (tpe(6, False), True),
        "tpe independent, 10 startup": (tpe(10, False), True),
        "nsga2": (shipped("nsga2"), True),
        "random": (shipped("random"), True),
        "tpe multivariate, 6 startup, repeats measured again": (shipped("tpe"), False),
        "tpe independent, 6 startup, repeats measured again (earlier default)": (tpe(6, False), False),
    }


def objective_sets(config: StudyConfig) -> dict[str, StudyConfig]:
    label = (Objective("label_accuracy", "maximize"), config.objectives[1])
    return {"field_accuracy vs p95 (default)": config,
            "label_accuracy vs p95": replace(config, objectives=label)}


def run(*, out: Path, smoke: bool = False, seeds: int = 40) -> Path:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    base = load(GRID_CONFIG)
    if smoke:
        seeds = 2
    rows = []
    fronts = {}
    started = time.perf_counter()
    for label, config in objective_sets(base).items():
        table = Table(config)
        scale = Scale(table)
        grid_size = len(table.records)
        budgets = [max(1, math.ceil(b * grid_size)) for b in BUDGETS]
        fronts[label] = {"settings": [dict(zip(table.names, k)) for k in scale.true_front],
                         "grid_size": grid_size}
        variants = sampler_variants(config)
        if smoke:
            variants = dict(list(variants.items())[:1] + list(variants.items())[-1:])
        for name, (make, reuse) in variants.items():
            for seed in range(seeds):
                found = replay(table, make(seed), max(budgets), early_abort=False, reuse=reuse)
                for fraction, budget in zip(BUDGETS, budgets):
                    first = found.trials.iloc[:budget]
                    rows.append({"objectives": label, "sampler": name, "seed": seed, "budget": fraction,
                                 "trials": budget, "share": scale.share(found, budget),
                                 "distinct_settings": first["key"].nunique(),
                                 "true_front_found": len(set(first["key"]) & set(scale.true_front))})
    results = pd.DataFrame(rows)
    summary = (results.groupby(["objectives", "sampler", "budget"], sort=False)
               .agg(trials=("trials", "first"), mean=("share", "mean"), p10=("share", lambda s: np.percentile(s, 10)),
                    worst=("share", "min"), at_target=("share", lambda s: float((s >= TARGET).mean())),
                    distinct=("distinct_settings", "mean"), front_points_found=("true_front_found", "mean"))
               .reset_index())
    result = {"grid": str(GRID_DATA.relative_to(GRID_DATA.parents[2])), "seeds": seeds, "target": TARGET,
              "budgets": list(BUDGETS), "true_fronts": fronts, "summary": summary.to_dict(orient="records"),
              "seconds": time.perf_counter() - started}
    return write_result("search", result, _report(summary, fronts, seeds), out)


def _report(summary: pd.DataFrame, fronts: dict[str, Any], seeds: int) -> str:
    lines = ["# Search efficiency against the true front", "",
             f"Replayed studies over {seeds} seeds per sampler. share: hypervolume of the found front / the true "
             f"front's (mean, 10th percentile, worst); at target: seeds reaching {TARGET:.0%}; distinct: settings "
             "actually measured among the trials.", ""]
    for label, part in summary.groupby("objectives", sort=False):
        front = fronts[label]
        lines += [f"## {label}", "", f"True front: {len(front['settings'])} of {front['grid_size']} settings.", "",
                  "| sampler | budget | trials | mean | p10 | worst | at target | distinct |",
                  "|---|---|---|---|---|---|---|---|"]
        for row in part.itertuples(index=False):
            lines.append(f"| {row.sampler} | {row.budget:.0%} | {row.trials} | {row.mean:.3f} | {row.p10:.3f} | "
                         f"{row.worst:.3f} | {row.at_target:.0%} | {row.distinct:.1f} |")
        lines.append("")
    return "\n".join(lines)
