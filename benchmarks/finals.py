"""Finals replayed on the full-split grid: is the promoted point the true best once the policy's finalists are
measured until its choice is decided?

``python -m benchmarks finals`` replays the default study (racing as shipped, default objectives: field accuracy
against p95) on ``benchmarks/data/grid_full.csv`` (144 settings × 60 dev requests), 40 seeds, as
``benchmarks.adaptive`` does, and then promotes with the knee and the SLA policy (SLA: the true front's median
p95). Arms: the study's 320 requests (16 trials × 20, the default) with ties broken by latency (the rule before
finals), by accuracy, or kept (the policy's own pick); 480 requests (1.5×) with no finals; 320 requests plus
finals of 80 or 160 requests, with each preference. Reported: how often the promoted point is the true best or tied with it on the whole split (hit),
exactly the true best (exact), and the requests the study and its finals spent.
"""

from __future__ import annotations

import multiprocessing
import os
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import pandas as pd

from benchmarks.adaptive import SIZE, VARIANTS, Replayed, Truth
from benchmarks.common import GRID_FULL_CONFIG, GRID_FULL_DATA, ROOT, load, read_grid, write_result
from benchmarks.replay import Table
from pipeline.errors import InputError
from pipeline.promote.choose import choose_trial
from pipeline.promote.promotion import PromotionPolicy
from pipeline.search.snapshot import StudySnapshot

EXPLORE = 16 * SIZE           # the default study: 16 trials × 20 requests
FINALS_REQUESTS = 160         # the knee's default finals budget (pipeline.promote.promotion.FINALS_REQUESTS)
RACING = VARIANTS[1]          # racing as shipped


@dataclass(frozen=True)
class Arm:
    name: str
    explore: int
    finals: int
    prefer: str


ARMS = (
    Arm("320, no finals, ties by latency (before)", EXPLORE, 0, "latency"),
    Arm("320, no finals, the policy's own pick", EXPLORE, 0, "policy"),
    Arm(f"320 + finals {FINALS_REQUESTS}, the policy's own pick (the knee's default)", EXPLORE, FINALS_REQUESTS,
        "policy"),
    Arm("320, no finals, ties by accuracy", EXPLORE, 0, "accuracy"),
    Arm("480, no finals, ties by accuracy", EXPLORE * 3 // 2, 0, "accuracy"),
    Arm("320 + finals 80, ties by accuracy", EXPLORE, 80, "accuracy"),
    Arm(f"320 + finals {FINALS_REQUESTS}, ties by latency", EXPLORE, FINALS_REQUESTS, "latency"),
    Arm(f"320 + finals {FINALS_REQUESTS}, ties by accuracy", EXPLORE, FINALS_REQUESTS, "accuracy"),
)

_CONTEXT: dict[str, Any] = {}  # built before the worker processes fork


def _policy(name: str, prefer: str, truth: Truth) -> PromotionPolicy:
    return PromotionPolicy("sla", sla_p95_ms=truth.sla, prefer=prefer) if name == "sla" else \
        PromotionPolicy("knee", prefer=prefer)


def _replay(task: tuple[int, Arm, str]) -> dict[str, Any]:
    seed, arm, policy_name = task
    config, table, truth = _CONTEXT["config"], _CONTEXT["table"], _CONTEXT["truth"]
    order = np.random.default_rng(seed).permutation(len(next(iter(table.records.values()))))
    policy = _policy(policy_name, arm.prefer, truth)
    replayed = Replayed(table, config, RACING, order, seed)
    replayed.run(arm.explore)
    explored = replayed.spent

    def choose(snapshot: StudySnapshot) -> int:
        return choose_trial(snapshot, config.objectives, policy).trial.number

    decided, tied = None, 0
    try:
        if arm.finals:
            finals = replayed.finals(choose, arm.finals)
            decided, tied = finals.decided, len(finals.tied)
        key = table.key(choose_trial(StudySnapshot.of(replayed.study), config.objectives, policy).trial.params)
    except InputError:
        key = None
    best = truth.knee if policy_name == "knee" else truth.sla_best
    measured = {table.key(t.params) for t in replayed.study.trials if t.state == optuna.trial.TrialState.COMPLETE}
    return {"arm": arm.name, "policy": policy_name, "seed": seed, "explored": explored,
            "best_measured": best in measured,
            "finals": replayed.spent - explored, "hit": key is not None and truth.hit(key, best),
            "exact": key == best, "decided": decided, "tied_left": tied}


def run(*, out: Path, smoke: bool = False, seeds: int = 40, grid: Path = GRID_FULL_DATA) -> Path:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    started = time.perf_counter()
    config = replace(load(GRID_FULL_CONFIG), evaluation=replace(load(GRID_FULL_CONFIG).evaluation, limit=SIZE))
    grid = grid.resolve()
    table = Table(config, read_grid(grid))
    truth = Truth(table)
    _CONTEXT.update(config=config, table=table, truth=truth)
    arms = ARMS
    if smoke:  # the full-split grid still (60 requests: the finals have requests to top up with), 2 seeds
        seeds, arms = 2, (ARMS[1], ARMS[2])
    tasks = [(seed, arm, policy) for arm in arms for policy in ("knee", "sla") for seed in range(seeds)]
    with multiprocessing.get_context("fork").Pool(1 if smoke else os.cpu_count()) as pool:
        rows = pool.map(_replay, tasks, chunksize=4)
    frame = pd.DataFrame(rows)
    summary = (frame.groupby(["arm", "policy"], sort=False)
               .agg(hit=("hit", "mean"), exact=("exact", "mean"), explored=("explored", "mean"),
                    finals=("finals", "mean"), best_measured=("best_measured", "mean"), decided=("decided", lambda d: float(np.mean([x for x in d if x
                                                                                          is not None] or [np.nan]))))
               .reset_index())
    result = {"grid": str(grid.relative_to(ROOT)) if grid.is_relative_to(ROOT) else str(grid), "seeds": seeds,
              "sla_p95_ms": truth.sla, "summary": summary.to_dict(orient="records"),
              "replays": frame.to_dict(orient="records"), "seconds": time.perf_counter() - started}
    return write_result("finals", result, _report(summary, result), out)


def _report(summary: pd.DataFrame, result: dict[str, Any]) -> str:
    lines = ["# Finals: the promoted point against the truth", "",
             f"Replayed on {result['grid']}, {result['seeds']} seeds, racing as shipped, field accuracy vs p95; SLA "
             f"policy at p95 <= {result['sla_p95_ms']:.0f} ms. hit: the promoted point is the true best or tied with "
             "it on the whole split; exact: the true best; decided: share of replays whose finals decided the "
             f"choice against every rival; true best measured: the replay measured the true best setting at all (a promotion "
             f"can be exact only then). {result['seconds']:.0f} s.", "",
             "| arm | policy | hit | exact | true best measured | study requests | finals requests | decided |",
             "|---|---|---|---|---|---|---|---|"]
    for row in summary.itertuples(index=False):
        decided = "" if pd.isna(row.decided) else f"{row.decided:.0%}"
        lines.append(f"| {row.arm} | {row.policy} | {row.hit:.0%} | {row.exact:.0%} | {row.best_measured:.0%} | "
                     f"{row.explored:.0f} | "
                     f"{row.finals:.0f} | {decided} |")
    return "\n".join(lines) + "\n"
