"""Measure every setting of the reduced search space once on the embedded engine.

``python -m benchmarks grid`` writes one row per timed request to ``benchmarks/data/grid.csv`` (committed) and
the run's circumstances to ``grid.json`` next to it; ``--full`` measures the same settings on the whole dev split
into ``grid_full.csv`` (about 2 h 40 min here; stop it any time, it continues where it stopped). Settings run in a shuffled order, so slow drifts of the
machine do not line up with any setting; each is measured exactly as a study trial is (``run_trial`` with the
study's trial plan: the trial's prompt cache emptied, warm-up after the load), every request of it (no early
abort). ``wall_ms`` is a clock outside the pipeline around the same engine call as ``latency_ms``. An
interrupted run continues where it stopped.
"""

from __future__ import annotations

import json
import random
import time
from dataclasses import replace
from pathlib import Path

import pandas as pd
from rich.console import Console
from rich.progress import Progress

from benchmarks.common import GRID_CONFIG, GRID_DATA, WallClock, environment, grid_settings, load, record_row, searched
from pipeline.measure.runner import run_trial
from pipeline.search.prepare import prepare_study
from pipeline.search.study import trial_plan


def key_of(row: dict | pd.Series, names: list[str]) -> str:
    return "|".join(f"{name}={row[name]}" for name in names)


def measure(*, out: Path = GRID_DATA, smoke: bool = False, config_path: Path = GRID_CONFIG) -> pd.DataFrame:
    config = load(config_path)
    if smoke:
        config = config.with_overrides(evaluation={"limit": 2})
    prepared = prepare_study(config)
    config = prepared.config
    names = searched(config)
    settings = grid_settings(config)
    random.Random(config.study.seed).shuffle(settings)
    if smoke:
        settings = settings[:2]
    done = pd.read_csv(out) if out.exists() else pd.DataFrame()
    measured = set(done.apply(lambda r: key_of(r, names), axis=1)) if not done.empty else set()
    todo = [s for s in settings if key_of(s.as_params(), names) not in measured]
    console = Console(stderr=True)
    console.print(f"grid: {len(settings)} settings x {len(prepared.examples)} requests; "
                  f"{len(settings) - len(todo)} already in {out}")
    started = time.perf_counter()
    loads: list[float] = []
    backend = WallClock(prepared.backend)  # an outside clock around each engine call, for the fidelity benchmark
    plan = replace(trial_plan(prepared), backend=backend, repetitions=1, abort_on=())
    with Progress(console=console) as progress:
        task = progress.add_task("settings", total=len(todo))
        for settings_one in todo:
            outcome = run_trial(settings_one, prepared.examples, plan)
            if outcome.infeasible:
                raise RuntimeError(f"{settings_one}: {outcome.infeasible}; the grid must fit its num_ctx")
            if outcome.model_loads:
                loads.append(outcome.model_load_ms)
            rows = pd.DataFrame([record_row(settings_one, r, i) for i, r in enumerate(outcome.records)])
            generated = [ms for name, ms in backend.calls if name == "generate"]
            rows["wall_ms"] = generated[len(generated) - len(rows):]
            backend.calls.clear()
            rows.to_csv(out, mode="a", header=not out.exists(), index=False)
            progress.advance(task)
    prepared.backend.close()
    meta_path = out.with_suffix(".json")
    meta = json.loads(meta_path.read_text()) if meta_path.exists() else {"runs": []}
    meta["runs"].append({**environment(), "settings_measured": len(todo), "seconds": time.perf_counter() - started,
                         "model": prepared.backend.describe()["model"], "model_loads_ms": loads,
                         "requests_per_setting": len(prepared.examples),
                         "warmup_requests": config.engine.warmup_requests, "config": str(config_path.name)})
    meta_path.write_text(json.dumps(meta, indent=2) + "\n")
    return pd.read_csv(out)
