"""Memory per context length and KV cache type, computed and measured, with what each costs in time.

``python -m benchmarks memory`` runs one Task API setting (below) on the bundled SmolLM2 through the llama-server
backend, one trial per ``num_ctx`` (512 to 8192, the model's training context) in f16, then one per KV cache type
(f16, q8_0, q4_0, flash attention on) at 4096, each over the same dev requests through the runner a study uses.
Per trial: the KV cache computed from the model's metadata (pipeline.engines.memory) beside llama-server's own
account of it (its log line, verbose), the server's peak resident memory during the timed requests, the prefill
time per request (llama-server's own timings), p50 latency and field accuracy. The source's table (4096 -> 1.2 GB,
2048 -> 0.8 GB, 1024 -> 0.5 GB for its model) measured here for this one.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.common import ROOT, write_result
from pipeline.engines.llama_server import LlamaServerBackend
from pipeline.engines.settings import settings_of
from pipeline.job.prompts import load_prompts
from pipeline.measure.metrics import summarize
from pipeline.measure.runner import TrialPlan, run_trial
from pipeline.search.config import load_config
from pipeline.search.prepare import study_experiment, warmup_example

CONFIG = ROOT / "configs" / "task_api.yaml"
SETTING = {"num_ctx": 1024, "num_predict": 64, "temperature": 0.0, "top_p": 1.0, "top_k": 40, "few_shot": 2,
           "prompt_variant": "compact", "example_selection": "static", "format": "schema"}
CONTEXTS = (512, 1024, 2048, 4096, 8192)
CACHE_TYPES = ("f16", "q8_0", "q4_0")
_LOGGED = re.compile(r"llama_kv_cache: size = +([\d.]+) MiB")


def run(*, out: Path, smoke: bool = False) -> Path:
    config = load_config(CONFIG)
    experiment = study_experiment(config)
    prompts = load_prompts(config.prompts, experiment)
    examples = experiment.split("dev", 3 if smoke else 20)
    backend = LlamaServerBackend(extra_args=("--verbose",), timeout_s=300)
    rows: list[dict[str, Any]] = []
    try:
        plan = TrialPlan(prompts=prompts, backend=backend, scorer=experiment.scorer,
                         warmup=warmup_example(experiment, prompts))
        grid = [(n, {}) for n in (CONTEXTS[:2] if smoke else CONTEXTS)]
        grid += [(4096 if not smoke else 512, {"cache_type_k": t, "cache_type_v": t, "flash_attn": "on"})
                 for t in (CACHE_TYPES[1:2] if smoke else CACHE_TYPES)]
        for num_ctx, server in grid:
            settings = settings_of({**SETTING, "num_ctx": num_ctx, **server}, seed=0)
            outcome = run_trial(settings, examples, plan)
            logged = _LOGGED.findall(backend._process.log_tail(20000)) if backend._process else []
            metrics = summarize(outcome.records, resources=outcome.resources)
            prefill = [r.prefill_ms for r in outcome.records if r.prefill_ms is not None]
            rows.append({"num_ctx": num_ctx, "cache_type": server.get("cache_type_k", "f16"),
                         "flash_attn": server.get("flash_attn", "auto"),
                         "kv_cache_mb": outcome.resources.get("kv_cache_mb"),
                         "kv_cache_mb_logged": float(logged[-1]) if logged else None,
                         "memory_mb": outcome.resources.get("memory_mb"),
                         "model_mb": outcome.resources.get("model_mb"),
                         "prefill_ms_p50": float(np.median(prefill)) if prefill else None,
                         "latency_p50_ms": metrics["latency_p50_ms"], "field_accuracy": metrics["field_accuracy"],
                         "requests": len(outcome.records)})
    finally:
        backend.close()
    result = {"setting": SETTING, "requests": len(examples), "rows": rows}
    return write_result("memory", result, _report(result), out)


def _report(result: dict[str, Any]) -> str:
    lines = ["# Memory per context length and KV cache type (llama-server, the bundled SmolLM2)", "",
             f"One Task API setting, {result['requests']} dev requests a trial; MiB. KV computed: from the model's "
             "metadata; logged: llama-server's own line; peak: the server process during the timed requests.", "",
             "| num_ctx | cache | KV computed | KV logged | peak memory | prefill p50 ms | p50 ms | fields |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for row in result["rows"]:
        def shown(value: float | None, digits: int = 1) -> str:
            return "-" if value is None else f"{value:.{digits}f}"
        lines.append(f"| {row['num_ctx']} | {row['cache_type']} | {shown(row['kv_cache_mb'], 2)} | "
                     f"{shown(row['kv_cache_mb_logged'], 2)} | {shown(row['memory_mb'])} | "
                     f"{shown(row['prefill_ms_p50'])} | {shown(row['latency_p50_ms'], 0)} | "
                     f"{row['field_accuracy']:.3f} |")
    model = next((row["model_mb"] for row in result["rows"] if row["model_mb"]), None)
    if model is not None:
        lines += ["", f"The weights file: {model:.1f} MiB."]
    return "\n".join(lines)
