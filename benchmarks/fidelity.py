"""Measurement fidelity: are the latencies the pipeline reports the latencies a user would see?

``python -m benchmarks fidelity``:

1. Outside clock. Every request of the grid (``benchmarks/data/grid.csv``) carries the pipeline's latency and
   a second clock taken outside the pipeline around the same engine call (``wall_ms``); this benchmark adds a
   fresh run of a few settings the same way. Target: median difference within 5%.
2. Cold vs warm. In fresh processes: the model load, then the same request ten times. Shows what the first
   calls after a load cost, and checks on a real trial that no load or warm-up call is among its records.
   Against the Ollama double, another client makes the server reload mid-trial (each reload made to take
   1.5 s, as a large model's would): the reload is counted, and is in no request's latency.
3. Repeatability. The same settings measured in two separate processes: the spread of p50/p95, and whether
   each run's value falls inside the other's 95% bootstrap interval.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import pandas as pd

from benchmarks.common import GRID_CONFIG, GRID_DATA, ROOT, WallClock, load, write_result
from pipeline.engines.settings import InferenceSettings
from pipeline.measure.metrics import measured_metrics
from pipeline.measure.runner import prepare_requests, run_trial
from pipeline.search.prepare import prepare_study
from pipeline.search.space import suggest
from pipeline.search.study import trial_plan

# Three settings of the grid, from a short plain answer to a long constrained one.
SETTINGS = (
    {"few_shot": 0, "prompt_variant": "minimal", "format": "off", "num_predict": 48, "temperature": 0.8},
    {"few_shot": 2, "prompt_variant": "compact", "format": "schema", "num_predict": 128, "temperature": 0.0},
    {"few_shot": 4, "prompt_variant": "verbose", "format": "json", "num_predict": 128, "temperature": 0.0},
)
CALLS_AFTER_LOAD = 10


def settings_of(values: dict[str, Any]) -> InferenceSettings:
    config = load(GRID_CONFIG)
    fixed = {name: spec.choices[0] for name, spec in config.search_space.items()}
    return suggest(optuna.trial.FixedTrial({**fixed, **values}), config.search_space, seed=config.study.seed)


def measure(limit: int | None) -> dict[str, Any]:
    """One process: each setting as a study trial, with the outside clock. Printed as JSON by ``--worker``."""
    config = load(GRID_CONFIG)
    if limit:
        config = config.with_overrides(evaluation={"limit": limit})
    prepared = prepare_study(config)
    backend = WallClock(prepared.backend)
    plan = replace(trial_plan(prepared), backend=backend, repetitions=1, abort_on=())
    results = []
    for values in SETTINGS:
        backend.calls.clear()
        outcome = run_trial(settings_of(values), prepared.examples, plan)
        generated = [ms for name, ms in backend.calls if name == "generate"]
        timed = generated[len(generated) - len(outcome.records):]
        if len(generated) != outcome.warmup_requests + len(outcome.records):
            raise RuntimeError("an engine call is neither a warm-up nor a record")
        results.append({
            "settings": values,
            "latency_ms": [r.latency_ms for r in outcome.records],
            "wall_ms": timed,
            "warmup_calls_ms": generated[:len(generated) - len(outcome.records)],
            "model_load_ms": outcome.model_load_ms,
            "metrics": measured_metrics(outcome.records),
        })
    prepared.backend.close()
    return {"settings": results}


def cold_start(calls: int) -> dict[str, Any]:
    """One process: load the model, then the same request ``calls`` times; and the load of a second context."""
    prepared = prepare_study(load(GRID_CONFIG))
    backend = prepared.backend  # nothing loaded yet but the vocabulary
    settings = settings_of(SETTINGS[1])
    request = prepare_requests([prepared.warmup], prepared.prompts, settings)[0]
    schema = request.example.schema.document
    load_ms = backend.start_trial(settings.num_ctx) * 1000
    first = [backend.generate(request.messages, settings, schema=schema).latency_ms for _ in range(calls)]
    other = replace(settings, num_ctx=1024)
    second_load_ms = backend.start_trial(other.num_ctx) * 1000
    second = [backend.generate(request.messages, other, schema=schema).latency_ms for _ in range(3)]
    backend.close()
    return {"load_ms": load_ms, "calls_ms": first, "second_context_load_ms": second_load_ms,
            "second_context_calls_ms": second}


def reload_mid_trial(limit: int | None) -> dict[str, Any]:
    """One process: a trial against the Ollama double, whose model another client reloads before the trial."""
    from pipeline.engines.ollama import OllamaBackend
    from pipeline.testing.ollama_double import OllamaDouble

    prepared = prepare_study(load(GRID_CONFIG).with_overrides(evaluation={"limit": limit or 10}))
    settings = settings_of(SETTINGS[1])
    with OllamaDouble(models={"task-api": None}, engine=prepared.backend) as double:  # the bundled model
        backend = OllamaBackend("task-api", host=double.url, timeout_s=60, reload_threshold_ms=250)
        plan = replace(trial_plan(prepared), backend=backend, warmup_requests=1, repetitions=1, margin=0.1,
                       abort_on=())
        run_trial(settings, prepared.examples, plan)
        backend.client.chat("task-api", messages=[], options={"num_ctx": 1024})  # another client's request
        double.reload_delay_s = 1.5
        outcome = run_trial(settings, prepared.examples, plan)
    return {"requests": len(outcome.records), "model_loads": outcome.model_loads,
            "model_load_ms": outcome.model_load_ms, "warmup_requests": outcome.warmup_requests,
            "max_latency_ms": max(r.latency_ms for r in outcome.records),
            "reload_delay_ms": 1500.0}


def _worker(kind: str, limit: int | None) -> dict[str, Any]:
    command = [sys.executable, "-m", "benchmarks.fidelity", kind, str(limit or 0)]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def _relative(pipeline_ms: np.ndarray, wall_ms: np.ndarray) -> np.ndarray:
    return (wall_ms - pipeline_ms) / wall_ms


def run(*, out: Path, smoke: bool = False) -> Path:
    limit = 2 if smoke else None
    started = time.perf_counter()
    grid = pd.read_csv(GRID_DATA)
    grid_diff = _relative(grid["latency_ms"].to_numpy(), grid["wall_ms"].to_numpy())
    colds = [_worker("cold", 4 if smoke else CALLS_AFTER_LOAD) for _ in range(1 if smoke else 3)]
    runs = [_worker("measure", limit) for _ in range(2)]
    reload = _worker("reload", limit)
    fresh = [(s["latency_ms"], s["wall_ms"]) for r in runs for s in r["settings"]]
    fresh_diff = _relative(np.concatenate([p for p, _ in fresh]), np.concatenate([w for _, w in fresh]))
    checks = []
    for r in runs:
        for s in r["settings"]:
            reported = set(np.round(s["latency_ms"], 6))
            checks.append(len(s["latency_ms"]) == len(s["wall_ms"]) and
                          not reported & set(np.round(s["warmup_calls_ms"], 6)))
    calls = np.array([c["calls_ms"] for c in colds])
    steady = np.median(calls[:, -3:])
    repeat = []
    for index, values in enumerate(SETTINGS):
        a, b = runs[0]["settings"][index]["metrics"], runs[1]["settings"][index]["metrics"]
        entry = {"settings": values}
        for metric in ("latency_p50_ms", "latency_p95_ms", "schema_valid_rate"):
            entry[metric] = [a[metric], b[metric]]
            entry[f"{metric}_spread"] = abs(a[metric] - b[metric]) / max(a[metric], b[metric], 1e-9)
            entry[f"{metric}_inside_other_ci"] = bool(
                a[f"{metric}_ci95_low"] <= b[metric] <= a[f"{metric}_ci95_high"] and
                b[f"{metric}_ci95_low"] <= a[metric] <= b[f"{metric}_ci95_high"]) if f"{metric}_ci95_low" in a else None
            if f"{metric}_ci95_low" in a:
                entry[f"{metric}_ci"] = [[a[f"{metric}_ci95_low"], a[f"{metric}_ci95_high"]],
                                         [b[f"{metric}_ci95_low"], b[f"{metric}_ci95_high"]]]
        repeat.append(entry)
    result = {
        "outside_clock": {
            "grid_requests": len(grid), "grid_median_diff": float(np.median(grid_diff)),
            "grid_p99_diff": float(np.percentile(grid_diff, 99)), "grid_max_diff": float(grid_diff.max()),
            "grid_median_diff_ms": float(np.median(grid["wall_ms"] - grid["latency_ms"])),
            "fresh_requests": int(len(fresh_diff)), "fresh_median_diff": float(np.median(fresh_diff)),
            "fresh_max_diff": float(fresh_diff.max()), "target": 0.05},
        "cold_start": {"runs": colds, "steady_ms": float(steady),
                       "call_over_steady": (np.median(calls, axis=0) / steady).tolist(),
                       "no_load_or_warmup_in_records": all(checks), "reload_mid_trial": reload},
        "repeatability": repeat,
        "seconds": time.perf_counter() - started,
    }
    return write_result("fidelity", result, _report(result), out)


def _report(result: dict[str, Any]) -> str:
    clock, cold = result["outside_clock"], result["cold_start"]
    reload = cold["reload_mid_trial"]
    lines = ["# Measurement fidelity", "", "## Pipeline latency vs an outside clock around the same engine call", "",
             f"- grid: {clock['grid_requests']} requests, median difference {clock['grid_median_diff']:.3%} "
             f"({clock['grid_median_diff_ms']:.2f} ms), 99th percentile {clock['grid_p99_diff']:.3%}, "
             f"largest {clock['grid_max_diff']:.3%}",
             f"- fresh runs: {clock['fresh_requests']} requests, median {clock['fresh_median_diff']:.3%}, "
             f"largest {clock['fresh_max_diff']:.3%} (target: within {clock['target']:.0%})", "",
             "## Cold vs warm", "",
             "Load, then the same request again and again, in fresh processes (median over runs; x: times the "
             "steady latency of the last three calls):", "",
             "| call | " + " | ".join(str(i + 1) for i in range(len(cold["call_over_steady"]))) + " |",
             "|---|" + "---|" * len(cold["call_over_steady"]),
             "| x steady | " + " | ".join(f"{x:.2f}" for x in cold["call_over_steady"]) + " |", "",
             f"- model load {np.median([r['load_ms'] for r in cold['runs']]):.0f} ms; steady request "
             f"{cold['steady_ms']:.0f} ms; a second context (another num_ctx) loads in "
             f"{np.median([r['second_context_load_ms'] for r in cold['runs']]):.0f} ms, its first call "
             f"{np.median([r['second_context_calls_ms'][0] for r in cold['runs']]):.0f} ms",
             f"- no load or warm-up call among any trial's records: {cold['no_load_or_warmup_in_records']}",
             f"- a reload forced mid-trial on the Ollama double (each reload {reload['reload_delay_ms']:.0f} ms): "
             f"{reload['model_loads']} reload counted ({reload['model_load_ms']:.0f} ms, as `model_load_ms`), "
             f"{reload['warmup_requests']} warm-up after it, the largest of the {reload['requests']} latencies "
             f"{reload['max_latency_ms']:.0f} ms", "",
             "## Repeatability: the same settings in two processes", "",
             "| settings | p50 ms (run 1, run 2) | spread | p95 ms | spread | p95 inside the other's CI | "
             "schema-valid | inside CI |", "|---|---|---|---|---|---|---|---|"]
    for e in result["repeatability"]:
        s = e["settings"]
        name = f"{s['few_shot']} shots, {s['prompt_variant']}, {s['format']}, predict {s['num_predict']}"
        lines.append(
            f"| {name} | {e['latency_p50_ms'][0]:.0f}, {e['latency_p50_ms'][1]:.0f} | "
            f"{e['latency_p50_ms_spread']:.1%} | {e['latency_p95_ms'][0]:.0f}, {e['latency_p95_ms'][1]:.0f} | "
            f"{e['latency_p95_ms_spread']:.1%} | {e['latency_p95_ms_inside_other_ci']} | "
            f"{e['schema_valid_rate'][0]:.2f}, {e['schema_valid_rate'][1]:.2f} | "
            f"{e['schema_valid_rate_inside_other_ci']} |")
    return "\n".join(lines)


if __name__ == "__main__":  # a worker process: python -m benchmarks.fidelity measure|cold LIMIT
    kind, number = sys.argv[1], int(sys.argv[2])
    work = {"measure": lambda: measure(number or None), "cold": lambda: cold_start(number),
            "reload": lambda: reload_mid_trial(number or None)}
    print(json.dumps(work[kind]()))
