"""Early abort: a trial that can no longer meet the SLA stops; is the front the same, and how much time is saved?

``python -m benchmarks abort`` with the SLA ``latency_p95_ms <= 1000`` and ``schema_valid_rate >= 0.8``:

1. Replay (``benchmarks/data/grid.csv``): studies with and without early abort over many seeds, the default
   sampler and random search at 15% and 25% of the grid. Reports the found front's hypervolume share, whether
   the found front is the same, and the engine time spent (the measured latencies of the requests run). Random
   search asks the same settings either way, so its fronts must be identical; TPE's later choices may differ
   since aborted trials report what they measured before stopping.
2. Real studies: the default study with the SLA and random search (the same 12 settings twice), once with
   early abort and once without, on the embedded engine with MLflow on: both fronts and both wall times.
"""

from __future__ import annotations

import math
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import pandas as pd

from benchmarks.common import GRID_CONFIG, ROOT, load, run_real_study, write_result
from benchmarks.replay import Scale, Table, found_front, replay
from benchmarks.search import sampler_variants
from pipeline.measure.registry import Constraint
from pipeline.search.config import StudyConfig, load_config

SLA = (Constraint("latency_p95_ms", max=1000.0), Constraint("schema_valid_rate", min=0.8))
BUDGETS = (0.15, 0.25)


def with_sla(config: StudyConfig, *, early_abort: bool, sampler: str | None = None) -> StudyConfig:
    study = replace(config.study, sampler=sampler or config.study.sampler)
    # fixed-size trials (no racing): early abort alone, as its published figures were measured
    return replace(config, constraints=SLA, study=study,
                   evaluation=replace(config.evaluation, early_abort=early_abort, stages=()))


def replayed(*, seeds: int) -> pd.DataFrame:
    config = with_sla(load(GRID_CONFIG), early_abort=True)
    table = Table(config)
    scale = Scale(table)
    latency = {key: np.array([r.latency_ms for r in records]) for key, records in table.records.items()}
    budgets = [math.ceil(b * len(table.records)) for b in BUDGETS]
    variants = {k: v[0] for k, v in sampler_variants(config).items() if k.endswith("(default)") or k == "random"}
    rows = []
    for name, make in variants.items():
        for seed in range(seeds):
            runs = {flag: replay(table, make(seed), max(budgets), early_abort=flag) for flag in (False, True)}
            for fraction, budget in zip(BUDGETS, budgets):
                row: dict[str, Any] = {"sampler": name, "seed": seed, "budget": fraction, "trials": budget}
                fronts = {}
                for flag, found in runs.items():
                    first = found.trials.iloc[:budget]
                    label = "abort" if flag else "full"
                    row[f"share_{label}"] = scale.share(found, budget)
                    row[f"requests_{label}"] = int(first["requests"].sum())
                    spent = zip(first["key"], first["requests"])
                    row[f"engine_s_{label}"] = sum(latency[k][:n].sum() for k, n in spent) / 1000
                    row[f"aborted_{label}"] = int(first["aborted"].sum())
                    fronts[label] = found_front(first, scale.objectives)
                row["same_front"] = fronts["abort"] == fronts["full"]
                rows.append(row)
    return pd.DataFrame(rows)


def real(*, trials: int, limit: int | None) -> dict[str, Any]:
    base = load_config(ROOT / "configs" / "task_api.yaml")
    if limit:
        base = base.with_overrides(evaluation={"limit": limit})
    studies = {}
    for flag in (False, True):
        config = with_sla(base, early_abort=flag, sampler="random")
        config = replace(config, study=replace(config.study, name=f"sla_{'abort' if flag else 'full'}"))
        with tempfile.TemporaryDirectory() as folder:
            report, wall, clock = run_real_study(config, trials=trials, folder=Path(folder))
        frame = report.trials
        shown = dict.fromkeys([*(o.metric for o in config.objectives), "schema_valid_rate"])
        studies["abort" if flag else "full"] = {
            "wall_s": wall, "engine_s": clock.total_ms() / 1000,
            "requests": int(frame["requests_measured"].sum()),
            "aborted": int((frame["aborted"] != "").sum()), "feasible": int(frame["feasible"].sum()),
            "front": sorted(int(n) for n in report.front["number"]),
            "front_points": report.front[["number", *shown]].to_dict(orient="records"),
            "trials": frame[["number", "feasible", "latency_p95_ms", "schema_valid_rate", "requests_measured"]]
            .assign(aborted=frame["aborted"] != "").to_dict(orient="records"),
        }
    return studies


def feasibility_changes(studies: dict[str, Any]) -> list[str]:
    """The trials feasible in one real study and not in the other, with what each measured (the settings are the
    same both times: random search with one seed)."""
    full = {t["number"]: t for t in studies["full"]["trials"]}
    notes = []
    for trial in studies["abort"]["trials"]:
        before = full.get(trial["number"])
        if before is not None and bool(before["feasible"]) != bool(trial["feasible"]):
            notes.append(f"trial {trial['number']}: without abort feasible={before['feasible']} (p95 "
                         f"{before['latency_p95_ms']:.0f} ms, schema-valid {before['schema_valid_rate']:.2f}, "
                         f"{before['requests_measured']:.0f} requests); with abort feasible={trial['feasible']} (p95 "
                         f"{trial['latency_p95_ms']:.0f} ms, schema-valid {trial['schema_valid_rate']:.2f}, "
                         f"{trial['requests_measured']:.0f} requests{', stopped early' if trial['aborted'] else ''})")
    return notes


def run(*, out: Path, smoke: bool = False, seeds: int = 40) -> Path:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    started = time.perf_counter()
    replays = replayed(seeds=2 if smoke else seeds)
    summary = (replays.groupby(["sampler", "budget"], sort=False)
               .agg(trials=("trials", "first"), share_full=("share_full", "mean"), share_abort=("share_abort", "mean"),
                    same_front=("same_front", "mean"), requests_full=("requests_full", "mean"),
                    requests_abort=("requests_abort", "mean"), engine_s_full=("engine_s_full", "mean"),
                    engine_s_abort=("engine_s_abort", "mean"), aborted=("aborted_abort", "mean"))
               .reset_index())
    summary["time_saved"] = 1 - summary["engine_s_abort"] / summary["engine_s_full"]
    studies = real(trials=2, limit=3) if smoke else real(trials=12, limit=None)
    saved = 1 - studies["abort"]["wall_s"] / studies["full"]["wall_s"]
    result = {"sla": [c.describe() for c in SLA], "seeds": 2 if smoke else seeds,
              "replay": summary.to_dict(orient="records"), "real": studies, "real_wall_time_saved": saved,
              "target_saved": 0.30, "seconds": time.perf_counter() - started}
    lines = ["# Early abort", "", f"SLA: {', '.join(result['sla'])}.", "",
             f"## Replay ({result['seeds']} seeds)", "",
             "| sampler | budget | share (full) | share (abort) | same front | requests full / abort | "
             "engine s full / abort | saved |", "|---|---|---|---|---|---|---|---|"]
    for r in summary.itertuples(index=False):
        lines.append(f"| {r.sampler} | {r.budget:.0%} | {r.share_full:.3f} | {r.share_abort:.3f} | "
                     f"{r.same_front:.0%} | {r.requests_full:.0f} / {r.requests_abort:.0f} | "
                     f"{r.engine_s_full:.0f} / {r.engine_s_abort:.0f} | {r.time_saved:.0%} |")
    full, abort = studies["full"], studies["abort"]
    lines += ["", "## Real studies (default study + SLA, random search, same settings both times)", "",
              "| | wall s | requests | aborted | feasible | front (trials) |", "|---|---|---|---|---|---|",
              f"| without early abort | {full['wall_s']:.0f} | {full['requests']} | {full['aborted']} | "
              f"{full['feasible']} | {full['front']} |",
              f"| with early abort | {abort['wall_s']:.0f} | {abort['requests']} | {abort['aborted']} | "
              f"{abort['feasible']} | {abort['front']} |", "",
              f"Wall time saved: **{saved:.0%}** (target 30%)."]
    changes = feasibility_changes(studies)
    if changes:
        lines += ["", "Trials feasible in one run and not the other (the same settings measured twice):", "",
                  *(f"- {note}" for note in changes)]
    return write_result("abort", result, "\n".join(lines), out)
