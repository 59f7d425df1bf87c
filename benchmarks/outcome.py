"""The outcome a user gets: each shipped job's study as shipped, then ``promote`` against its baseline.

``python -m benchmarks outcome`` runs, for the Task API, tickets and invoices configs: the study (its trials,
its correctness-first objectives, its baseline measured first), then the promotion of the knee of its front
(among the points that beat the baseline on dev), measured side by side with the config's baseline on the
held-out split (interleaved, 2 passes; 1 for invoices), and reports the gain table with its paired intervals.
The bar, per job: the promoted point dominates the baseline (p95 no higher, exact match and field accuracy
higher) and its p95 is within 1.5× of the engine's floor for its answers — each held-out answer's measured
prefill plus its decoded tokens at the engine's peak decode rate (the fastest tokens/s of any answer of the
run) — whose p95 is the floor.

``--smoke``: the Task API only, 2 trials of 3 requests without constraints, one pass.
"""

from __future__ import annotations

import math
import os
import tempfile
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.common import ROOT, write_result
from pipeline.errors import InputError
from pipeline.measure.records import RequestRecord
from pipeline.promote.promotion import PromotionPolicy, PromotionRefused, promote
from pipeline.search.config import load_config
from pipeline.search.fronts import SETTINGS
from pipeline.search.prepare import prepare_study
from pipeline.search.study import run_study

JOBS = ("task_api", "tickets", "invoices")
# Held-out passes per setting: two, except where answers take 10-20 s each (one keeps the run near 40 minutes).
PASSES = {"invoices": 1}
FLOOR_TARGET = 1.5


def engine_floor(records: list[RequestRecord], peak_tokens_per_s: float) -> float:
    """p95 over the answers of (measured prefill + decoded tokens at the peak decode rate), in ms."""
    floors = [(r.prefill_ms or 0.0) + 1000 * (r.decode_tokens or 0) / peak_tokens_per_s
              for r in records if not r.failed]
    return float(np.percentile(floors, 95)) if floors else float("nan")


def decode_rates(records: list[RequestRecord]) -> list[float]:
    """The decode rates (tokens/s) of the answers with at least 8 decoded tokens."""
    return [1000 * r.decode_tokens / r.decode_ms for r in records
            if not r.failed and r.decode_ms and r.decode_tokens and r.decode_tokens >= 8]


def peak_rate(records: list[RequestRecord]) -> float:
    """The fastest decode rate of any answer: the engine's peak."""
    rates = decode_rates(records)
    return max(rates) if rates else float("nan")


def report_settings(trials) -> list[str]:
    """The settings columns of a trials frame that vary between its rows."""
    return [k for k in SETTINGS if k in trials and trials[k].nunique() > 1]


def one_job(name: str, *, folder: Path, smoke: bool) -> dict[str, Any]:
    # fixed-size trials (no racing), as its published figures were measured
    config = load_config(ROOT / "configs" / f"{name}.yaml").with_overrides(evaluation={"stages": []})
    if smoke:  # no constraint: two trials of three requests must leave a front to promote
        config = replace(config.with_overrides(evaluation={"limit": 3}), constraints=())
    os.chdir(folder)
    started = time.perf_counter()
    prepared = prepare_study(config, tracking_uri=f"sqlite:///{folder}/mlflow.db")
    try:
        study = run_study(prepared, trials=2 if smoke else config.study.trials)
        study_s = time.perf_counter() - started
        # the finals as promote holds them by default; a few requests in the smoke size
        policy = PromotionPolicy("knee", repetitions=1 if smoke else PASSES.get(name, 2),
                                 output=folder / "promoted", finals_requests=6 if smoke else None)
        try:
            report, refused = promote(prepared, name, policy), ""
        except PromotionRefused as exc:
            report, refused = exc.report, str(exc)
        except InputError as exc:  # e.g. no feasible point on the front: nothing to promote
            report, refused = None, str(exc)
    finally:
        prepared.backend.close()
    if report is None:  # what came closest: the most schema-valid trials
        closest = study.trials.sort_values(["schema_valid_rate", "field_accuracy"], ascending=False).head(3)
        return {"job": name, "refused": refused, "study_s": study_s, "trials": len(study.trials),
                "closest": closest[["number", "schema_valid_rate", "field_accuracy", "latency_p95_ms", "aborted",
                                    *report_settings(closest)]].to_dict("records")}
    from mlflow import MlflowClient

    client = MlflowClient(f"sqlite:///{folder}/mlflow.db")
    run = client.get_run(report.run_id)
    side = client.load_table(run.info.experiment_id, "side_by_side.json", run_ids=[run.info.run_id])
    records = [RequestRecord(row.request_id, "", None, "", None, row.latency_ms, prefill_ms=row.prefill_ms,
                             decode_ms=row.decode_ms, decode_tokens=None if math.isnan(row.decode_tokens)
                             else int(row.decode_tokens), failed=bool(row.failed))
               for row in side.itertuples()]
    candidate = [r for r, arm in zip(records, side["arm"]) if arm == "candidate"]
    peak = peak_rate(records)
    floor = engine_floor(candidate, peak)
    gains = {g.metric: g for g in report.gains}
    dominates = (gains["latency_p95_ms"].change <= 1 and gains["exact_match_rate"].change > 0
                 and gains["field_accuracy"].change > 0)
    baseline_trial = study.trials[study.trials["baseline"]]
    first = config.objectives[0].metric
    best = study.front.sort_values(first, ascending=False).iloc[0] if not study.front.empty else None
    most_accurate = {} if best is None else {
        "trial": int(best["number"]), first: float(best[first]),
        "ci95": [float(best.get(f"{first}_ci95_{end}", float("nan"))) for end in ("low", "high")],
        "latency_p95_ms": float(best["latency_p95_ms"]),
        "settings": {k: best[k] for k in report.settings.as_params() if k in best and k != "seed"}}
    return {"job": name, "study_s": study_s, "trials": len(study.trials), "front": len(study.front),
            "promoted_trial": report.trial, "choice": report.choice,
            "finals": report.finals.summary() if report.finals is not None else "",
            "settings": report.settings.as_params(),
            "refused": refused,
            "most_accurate_front_point": most_accurate,
            "baseline_dev": baseline_trial.iloc[0][["field_accuracy", "exact_match_rate", "schema_valid_rate",
                                                     "latency_p95_ms"]].to_dict() if not baseline_trial.empty else {},
            "gains": [asdict(g) for g in report.gains], "held_out_requests": len(candidate),
            "peak_tokens_per_s": peak,
            "promoted_median_tokens_per_s": float(np.median(decode_rates(candidate) or [float("nan")])),
            "floor_p95_ms": floor, "p95_over_floor": gains["latency_p95_ms"].candidate / floor,
            "dominates": dominates, "floor_ok": gains["latency_p95_ms"].candidate / floor <= FLOOR_TARGET}


def run(*, out: Path, smoke: bool = False) -> Path:
    cwd = os.getcwd()
    results = []
    try:
        for name in JOBS[:1] if smoke else JOBS:
            with tempfile.TemporaryDirectory() as folder:
                results.append(one_job(name, folder=Path(folder), smoke=smoke))
    finally:
        os.chdir(cwd)
    lines = ["# Outcome: the shipped studies, promoted, against their baselines", "",
             "Knee of the front points that beat the baseline on dev (of the whole front when none does), measured "
             "side by side with the config's baseline on the held-out split (interleaved; change [95% "
             "paired-bootstrap interval]).", ""]
    for result in results:
        lines += [f"## {result['job']}", ""]
        if "gains" not in result:
            lines += [f"nothing promoted: {result['refused']} (study {result['study_s']:.0f} s, "
                      f"{result['trials']} trials). The most schema-valid trials:", ""]
            lines += [f"- trial {t['number']}: schema-valid {t['schema_valid_rate']:.2f}, field accuracy "
                      f"{t['field_accuracy']:.3f}, p95 {t['latency_p95_ms']:.0f} ms"
                      + (f" (stopped early: {t['aborted']})" if t["aborted"] else "") + "; "
                      + ", ".join(f"{k} {v}" for k, v in t.items() if k not in
                                  ("number", "schema_valid_rate", "field_accuracy", "latency_p95_ms", "aborted"))
                      for t in result["closest"]]
            lines.append("")
            continue
        settings = ", ".join(f"{k} {v}" for k, v in result["settings"].items() if k != "seed")
        best = result["most_accurate_front_point"]
        if best:
            metric = next(k for k in best if k not in ("trial", "ci95", "latency_p95_ms", "settings"))
            lines += [f"Most accurate point of the front: trial {best['trial']}, {metric} {best[metric]:.3f} "
                      f"[{best['ci95'][0]:.3f}, {best['ci95'][1]:.3f}], p95 {best['latency_p95_ms']:.0f} ms.", ""]
        lines += [f"Study {result['study_s']:.0f} s, {result['trials']} trials, front {result['front']}; promoted "
                  f"trial {result['promoted_trial']} ({settings}; "
                  f"{result['choice'] or 'the knee of the whole front'}); {result['held_out_requests']} held-out "
                  "requests per setting.", "", "| metric | baseline | promoted | change |", "|---|---|---|---|"]
        for g in result["gains"]:
            change = (f"×{g['change']:.3g} [{g['low']:.3g}, {g['high']:.3g}]" if g["kind"] == "ratio"
                      else f"{g['change']:+.3g} [{g['low']:+.3g}, {g['high']:+.3g}]")
            lines.append(f"| {g['metric']} | {g['baseline']:.3g} | {g['candidate']:.3g} | {change} |")
        lines += ["", f"- dominates the baseline (p95 no higher, exact match and field accuracy higher): "
                      f"**{'yes' if result['dominates'] else 'no'}**",
                  f"- engine floor: peak decode {result['peak_tokens_per_s']:.0f} tokens/s (the promoted "
                  f"setting's median: {result['promoted_median_tokens_per_s']:.0f}), floor p95 "
                  f"{result['floor_p95_ms']:.0f} ms; promoted p95 / floor = **{result['p95_over_floor']:.2f}** "
                  f"(target ≤ {FLOOR_TARGET})",
                  f"- promotion: {result['refused'] or 'accepted'}", ""]
    return write_result("outcome", {"jobs": results, "floor_target": FLOOR_TARGET}, "\n".join(lines), out)
