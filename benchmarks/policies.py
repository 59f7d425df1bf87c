"""Promotion policies replayed on the full-split grid: what each promotes, against what the replay measured.

``python -m benchmarks policies`` replays the default study (16 trials × 20 requests, racing as shipped, field
accuracy against p95) on ``benchmarks/data/grid_full.csv`` (144 settings × 60 dev requests), 40 seeds, as
``benchmarks.finals`` does, then holds each policy's finals (up to 160 dev requests, the default) and lets it
choose, paired on the requests the points share (the accuracy policy's finals decide a pair on accuracy alone, as
shipped; an arm decides on every objective, as before). Every promoted setting is judged by its values over the whole
split (the truth). For each replay: the most accurate setting it measured (by true field accuracy) and the band of
measured settings within the margin of it; the promoted setting is **within** when its true accuracy is in that
band, and its **latency excess** is its true p95 over the fastest true p95 in the band. The ``latency`` policy
needs a baseline, which the grid has not: it is not replayed.
"""

from __future__ import annotations

import multiprocessing
import os
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import pandas as pd

from benchmarks.adaptive import SIZE, VARIANTS, Replayed, Truth
from benchmarks.common import GRID_FULL_CONFIG, GRID_FULL_DATA, ROOT, load, read_grid, write_result
from benchmarks.replay import Table
from pipeline.errors import PipelineError
from pipeline.promote.choose import choose_trial
from pipeline.promote.policies import policy_named
from pipeline.promote.promotion import FINALS_REQUESTS, MARGIN, PromotionPolicy
from pipeline.search.snapshot import StudySnapshot

EXPLORE = 16 * SIZE           # the default study: 16 trials × 20 requests
RACING = VARIANTS[1]          # racing as shipped
MARGINS = (0.0, 0.02, 0.05, 0.1)

_CONTEXT: dict[str, Any] = {}  # built before the worker processes fork


def _arms(truth: Truth) -> list[tuple[str, PromotionPolicy, bool]]:
    """(label, policy, finals as the policy holds them): the accuracy policy at each margin with its finals
    decided on accuracy alone (as shipped) and on every objective, the knee, and the SLA policy at the true
    front's median p95, each with its default finals."""
    arms = [(f"accuracy, margin {m:g}{', finals on accuracy (the default)' if alone else ', finals on both'}",
             PromotionPolicy("accuracy", margin=m), alone) for alone in (True, False) for m in MARGINS]
    return arms + [("knee", PromotionPolicy("knee"), True),
                   ("sla", PromotionPolicy("sla", sla_p95_ms=truth.sla), True)]


def _replay(task: tuple[int, str, PromotionPolicy, bool, float]) -> dict[str, Any]:
    seed, label, policy, alone, band = task
    config, table, truth = _CONTEXT["config"], _CONTEXT["table"], _CONTEXT["truth"]
    order = np.random.default_rng(seed).permutation(len(next(iter(table.records.values()))))
    replayed = Replayed(table, config, RACING, order, seed)
    replayed.run(EXPLORE)
    explored = replayed.spent
    alpha = config.evaluation.error_rate

    def snapshot() -> StudySnapshot:
        return StudySnapshot.of(replayed.study, lambda t: replayed.records[t.number])

    def choose(snap: StudySnapshot) -> int:
        return choose_trial(snap, config.objectives, policy, alpha=alpha).trial.number

    try:
        if FINALS_REQUESTS[policy.policy]:
            replayed.finals(choose, FINALS_REQUESTS[policy.policy],
                            decide_on=policy_named(policy.policy).decides_on(config.objectives) if alone
                            else config.objectives)
        key = table.key(choose_trial(snapshot(), config.objectives, policy, alpha=alpha).trial.params)
    except PipelineError:
        key = None
    measured = {table.key(t.params) for t in replayed.study.trials
                if t.state == optuna.trial.TrialState.COMPLETE and truth.rows[table.key(t.params)]["feasible"]}
    accuracy = {k: truth.rows[k]["field_accuracy"] for k in measured}
    p95 = {k: truth.rows[k]["latency_p95_ms"] for k in measured}
    top = max(accuracy.values())
    within_band = [k for k in measured if accuracy[k] >= top - band]
    fastest = min(p95[k] for k in within_band)
    row = {"arm": label, "seed": seed, "explored": explored, "finals": replayed.spent - explored,
           "best_measured_accuracy": top, "band": band}
    if key is None:
        return {**row, "promoted": False}
    return {**row, "promoted": True, "accuracy": truth.rows[key]["field_accuracy"],
            "p95": truth.rows[key]["latency_p95_ms"], "within": truth.rows[key]["field_accuracy"] >= top - band,
            "regret": top - truth.rows[key]["field_accuracy"],
            "latency_excess": truth.rows[key]["latency_p95_ms"] / fastest - 1}


def run(*, out: Path, smoke: bool = False, seeds: int = 40, grid: Path = GRID_FULL_DATA) -> Path:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    started = time.perf_counter()
    config = replace(load(GRID_FULL_CONFIG), evaluation=replace(load(GRID_FULL_CONFIG).evaluation, limit=SIZE))
    table = Table(config, read_grid(grid.resolve()))
    truth = Truth(table)
    _CONTEXT.update(config=config, table=table, truth=truth)
    arms = _arms(truth)
    if smoke:
        seeds, arms = 2, [arms[1], arms[-2]]  # the default, the knee
    # every arm is judged in the band of the default margin, and the accuracy arms in their own too
    tasks = [(seed, label, policy, alone, band) for label, policy, alone in arms for seed in range(seeds)
             for band in dict.fromkeys((MARGIN, policy.margin if policy.policy == "accuracy" else MARGIN))]
    with multiprocessing.get_context("fork").Pool(1 if smoke else os.cpu_count()) as pool:
        rows = pool.map(_replay, tasks, chunksize=4)
    frame = pd.DataFrame(rows)
    done = frame[frame["promoted"]]
    summary = (done.groupby(["arm", "band"], sort=False)
               .agg(within=("within", "mean"), regret=("regret", "mean"), accuracy=("accuracy", "mean"),
                    p95=("p95", "median"), latency_excess=("latency_excess", "median"),
                    finals=("finals", "mean"))
               .reset_index())
    summary["promoted"] = [float(frame[(frame["arm"] == a) & (frame["band"] == b)]["promoted"].mean())
                           for a, b in zip(summary["arm"], summary["band"])]
    result = {"grid": str(grid.resolve().relative_to(ROOT)) if grid.resolve().is_relative_to(ROOT) else str(grid),
              "seeds": seeds, "sla_p95_ms": truth.sla, "summary": summary.to_dict(orient="records"),
              "replays": frame.to_dict(orient="records"), "seconds": time.perf_counter() - started}
    return write_result("policies", result, _report(summary, result), out)


def _report(summary: pd.DataFrame, result: dict[str, Any]) -> str:
    lines = ["# Promotion policies against what the replay measured", "",
             f"Replayed on {result['grid']}, {result['seeds']} seeds: the default study (320 requests, racing), each "
             f"policy's default finals, then its choice (SLA policy at p95 <= {result['sla_p95_ms']:.0f} ms). band: "
             "the measured settings within this margin of the most accurate one the replay measured (true values "
             "over the whole split); within: the promoted setting's true field accuracy is in the band; regret: "
             "the most accurate measured setting's true accuracy minus the promoted one's (mean); p95 excess: the "
             "promoted setting's true p95 over the fastest in the band (median). "
             f"{result['seconds']:.0f} s.", "",
             "| policy | band | within | regret | true accuracy | true p95 ms | p95 excess | finals requests "
             "| promoted |",
             "|---|---|---|---|---|---|---|---|---|"]
    for row in summary.itertuples(index=False):
        lines.append(f"| {row.arm} | {row.band:g} | {row.within:.0%} | {row.regret:.3f} | {row.accuracy:.3f} | "
                     f"{row.p95:.0f} | {row.latency_excess:+.0%} | {row.finals:.0f} | {row.promoted:.0%} |")
    return "\n".join(lines) + "\n"
