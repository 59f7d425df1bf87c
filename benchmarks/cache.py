"""The exact response cache on the Task API's traffic: cache off against exact, the same setting otherwise.

``python -m benchmarks cache`` measures one Task API setting (below) on the bundled SmolLM2 in process, over the
job's dev traffic (120 arrivals in order: "List all tasks" again and again, creates with varied content, look-alikes),
twice side by side (pipeline.measure.sidebyside): one arm with ``cache: off``, one with ``cache: exact``, each on its
own engine, the requests interleaved so that the machine's drift hits both. Reported, each with its 95% interval:
the hit rate (Wilson), the engine requests saved, p50 and p95 over the traffic with hits included (the ratio exact /
off, paired bootstrap over the arrivals), the field accuracy and exact match of the served answers (the paired
difference), and what a hit costs (hashing and lookup).

Target (the issue's): p50 over the traffic at least 3× lower with the cache, served accuracy unchanged (the interval
of the difference holds 0).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.common import ROOT, write_result
from pipeline.engines.config import EngineConfig
from pipeline.engines.embedded import EmbeddedBackend
from pipeline.engines.settings import settings_of
from pipeline.job.experiment import load_experiment
from pipeline.job.prompts import load_prompts
from pipeline.measure.gain import paired_gain
from pipeline.measure.intervals import ERROR_RATE, interval
from pipeline.measure.metrics import summarize
from pipeline.measure.runner import TrialPlan
from pipeline.measure.sidebyside import measure_on_own_backends
from pipeline.search.config import load_config
from pipeline.search.prepare import warmup_example

CONFIG = ROOT / "configs" / "task_api.yaml"
# A setting the default study finds on the front (BENCHMARKS.md): two fixed examples, the compact prompt, the
# schema enforced while decoding.
SETTING = {"num_ctx": 1024, "num_predict": 64, "temperature": 0.0, "top_p": 1.0, "top_k": 40, "few_shot": 2,
           "prompt_variant": "compact", "example_selection": "static", "format": "schema"}


def run(*, out: Path, smoke: bool = False) -> Path:
    config = load_config(CONFIG)
    experiment = load_experiment(config.experiment)  # with its traffic, whatever the shipped config measures
    if not experiment.traffic:
        raise SystemExit(f"{config.experiment} has no traffic file: the cache has nothing to serve again")
    prompts = load_prompts(config.prompts, experiment)
    arrivals = experiment.split("dev", None)[: 12 if smoke else None]
    backend = EmbeddedBackend(threads=2)
    try:
        plan = TrialPlan(prompts=prompts, backend=backend, scorer=experiment.scorer,
                         warmup=warmup_example(experiment, prompts), never_cache=experiment.never_cache)
        off, exact = (settings_of({**SETTING, "cache": mode}, seed=0) for mode in ("off", "exact"))
        measured = measure_on_own_backends(("off", off), ("exact", exact), arrivals, plan,
                                           engine=EngineConfig(backend="embedded", threads=2))
    finally:
        backend.close()
    records = {name: outcome.records for name, outcome in measured.outcomes.items()}
    gains = {g.metric: g for g in paired_gain(records["off"], records["exact"],
                                              ["field_accuracy", "exact_match_rate"])}
    metrics = {name: summarize(rs) for name, rs in records.items()}
    hits = sum(bool(r.cache) for r in records["exact"])
    low, high = interval(records["exact"], "cache_hit_rate", ERROR_RATE)
    hit_ms = [r.latency_ms for r in records["exact"] if r.cache]
    result: dict[str, Any] = {
        "setting": SETTING, "arrivals": len(arrivals), "distinct_requests": len({e.request for e in arrivals}),
        "hit_rate": hits / len(records["exact"]), "hit_rate_interval": [low, high], "engine_requests_saved": hits,
        "hit_ms_p50": float(np.median(hit_ms)) if hit_ms else None, "hit_ms_max": max(hit_ms, default=None),
        "miss_lookup_ms_mean": float(np.mean([r.cache_ms for r in records["exact"] if not r.cache])),
        "gains": list(gains.values()),
        "metrics": {name: {k: m[k] for k in ("latency_p50_ms", "latency_p95_ms", "field_accuracy",
                                             "exact_match_rate", "schema_valid_rate")}
                    for name, m in metrics.items()},
    }
    p50 = gains["latency_p50_ms"]
    result["target_p50_3x"] = bool(p50.high <= 1 / 3)
    result["target_accuracy_unchanged"] = all(gains[m].low <= 0 <= gains[m].high
                                              for m in ("field_accuracy", "exact_match_rate"))
    return write_result("cache", result, _report(result), out)


def _report(result: dict[str, Any]) -> str:
    gains = {g.metric: g for g in result["gains"]}
    off, exact = result["metrics"]["off"], result["metrics"]["exact"]
    low, high = result["hit_rate_interval"]
    lines = [
        "# The exact response cache on the Task API traffic",
        "",
        f"One setting ({', '.join(f'{k}={v}' for k, v in result['setting'].items())}), cache off against exact, "
        f"side by side over {result['arrivals']} dev arrivals ({result['distinct_requests']} distinct requests). "
        "Intervals: 95%; ratios and differences paired over the arrivals.",
        "",
        "| | cache off | cache exact | exact vs off |",
        "| --- | --- | --- | --- |",
        f"| hit rate | - | {result['hit_rate']:.2f} [{low:.2f}, {high:.2f}] | |",
        f"| engine requests saved | 0 | {result['engine_requests_saved']} | |",
    ]
    for metric, name in (("latency_p50_ms", "p50 ms"), ("latency_p95_ms", "p95 ms")):
        g = gains[metric]
        lines.append(f"| {name} | {off[metric]:.0f} | {exact[metric]:.1f} | ×{g.change:.3g} [{g.low:.3g}, "
                     f"{g.high:.3g}] |")
    for metric, name in (("field_accuracy", "field accuracy"), ("exact_match_rate", "exact match")):
        g = gains[metric]
        lines.append(f"| {name} (served) | {off[metric]:.3f} | {exact[metric]:.3f} | {g.change:+.3f} "
                     f"[{g.low:+.3f}, {g.high:+.3f}] |")
    lines += [
        "",
        f"A hit's own cost (hashing the rendered messages, schema, settings and model, then the lookup): median "
        f"{result['hit_ms_p50']:.3f} ms, at most {result['hit_ms_max']:.3f} ms; a miss pays "
        f"{result['miss_lookup_ms_mean']:.3f} ms on average before the engine answers.",
        "",
        f"- p50 at least 3× lower with the cache (the ratio's whole interval at or below 1/3): "
        f"{'met' if result['target_p50_3x'] else 'not met'}",
        f"- served accuracy unchanged (each difference's interval holds 0): "
        f"{'met' if result['target_accuracy_unchanged'] else 'not met'}",
    ]
    return "\n".join(lines)
