"""``pipeline diagnose`` on each shipped job's baseline (what its config says is served today), at a stated price.

``python -m benchmarks diagnose`` runs the diagnosis of :mod:`pipeline.promote.diagnose` on the embedded engine for
``configs/task_api.yaml``, ``tickets.yaml`` and ``invoices.yaml``: each baseline over its config's dev requests, the
machine priced at :data:`PRICE` an hour. Per job: latency p50 and p95, the split of the time, memory, the cost of
1,000 answers, field accuracy, the verdict and the searched settings that act on it.
"""

from __future__ import annotations

import tempfile
from dataclasses import replace
from pathlib import Path
from typing import Any

from benchmarks.common import ROOT, write_result
from pipeline.promote.diagnose import diagnose
from pipeline.search.config import CostConfig, load_config
from pipeline.search.prepare import prepare_study

JOBS = ("task_api", "tickets", "invoices")
PRICE = CostConfig(per_hour=0.90, currency="USD")  # a stated price for the machine, not a measured one


def run(*, out: Path, smoke: bool = False) -> Path:
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as store:
        for job in JOBS[:1] if smoke else JOBS:
            config = replace(load_config(ROOT / "configs" / f"{job}.yaml"), cost=PRICE)
            prepared = prepare_study(config, tracking_uri=f"sqlite:///{store}/mlflow.db")
            try:
                found = diagnose(prepared, "baseline", dict(config.baseline or {}), split="dev",
                                 limit=3 if smoke else config.evaluation.limit, repetitions=1,
                                 experiment_name="diagnose")
            finally:
                prepared.backend.close()
            m = found.metrics
            rows.append({"job": job, "requests": found.requests, "settings": found.settings,
                         **{k: m.get(k) for k in ("latency_p50_ms", "latency_p95_ms", "prefill_share", "decode_share",
                                                  "other_share", "memory_mb", "kv_cache_mb", "cost_per_1k_answers",
                                                  "field_accuracy")},
                         "bottleneck": found.verdict.kind, "verdict": found.verdict.sentence,
                         "levers": list(found.levers)})
    result = {"price_per_hour": PRICE.per_hour, "currency": PRICE.currency, "rows": rows}
    return write_result("diagnose", result, _report(result), out)


def _report(result: dict[str, Any]) -> str:
    lines = ["# pipeline diagnose on each shipped job's baseline", "",
             f"Embedded engine, the bundled SmolLM2; the machine at {result['price_per_hour']:.2f} "
             f"{result['currency']} an hour; cost at the measured throughput, one request at a time.", "",
             "| job | requests | p50 ms | p95 ms | prefill | decode | other | peak MiB | KV MiB | cost / 1k | fields "
             "| bottleneck | levers searched |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in result["rows"]:
        lines.append(f"| {r['job']} | {r['requests']} | {r['latency_p50_ms']:.0f} | {r['latency_p95_ms']:.0f} | "
                     f"{r['prefill_share']:.0%} | {r['decode_share']:.0%} | {r['other_share']:.0%} | "
                     f"{r['memory_mb']:.0f} | {r['kv_cache_mb']:.1f} | {r['cost_per_1k_answers']:.3f} | "
                     f"{r['field_accuracy']:.3f} | {r['bottleneck']} | {', '.join(r['levers']) or '-'} |")
    lines += ["", *(f"- {r['job']}: {r['verdict']}" for r in result["rows"])]
    return "\n".join(lines)
