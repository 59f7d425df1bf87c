"""Serving under load, on llama.cpp's llama-server: throughput, p95 and goodput against concurrency × parallel
slots with the bound beside them, and what the HTTP server adds per request over the embedded engine.

``python -m benchmarks serving`` runs one fixed Task API setting (below) on the bundled SmolLM2:

1. **Load grid.** For each number of slots (``parallel`` 1, 2, 4) a llama-server is started by the
   ``llama-server`` backend; on it, one trial per concurrency (1, 2, 4 closed-loop clients) on the same dev
   requests, through the runner a study uses (warm-up after each start, never timed). Goodput counts the requests
   answered within ``GOODPUT_LIMIT_MS``. The grid is measured twice, the second pass in the reverse order, so
   that the machine's drift over minutes shows as the spread between the passes instead of as a difference
   between cells; the report gives their mean and both values.
2. **The bound.** ``llama-batched-bench`` (built beside llama-server) decodes 1, 2 and 4 sequences at once on the
   same model and threads: its aggregate generation speed is what batching can add on this machine, without
   HTTP, sampling or JSON grammars. Its one-sequence speed times the batch gain bounds output tokens/s.
3. **What the HTTP server adds.** The same setting on the embedded engine and on llama-server (one slot, one
   client), interleaved request by request (pipeline.measure.sidebyside), so drift hits both; per request, the
   difference of the two latencies, and inside llama-server the wall clock minus its own timings.
"""

from __future__ import annotations

import re
import subprocess
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.common import ROOT, write_result
from pipeline.engines.embedded import EmbeddedBackend, bundled_model_path
from pipeline.engines.llama_server import LlamaServerBackend
from pipeline.engines.process import find_binary
from pipeline.engines.settings import settings_of
from pipeline.job.prompts import load_prompts
from pipeline.measure.metrics import summarize
from pipeline.measure.runner import TrialPlan, run_trial
from pipeline.measure.sidebyside import Arm, measure_side_by_side
from pipeline.search.config import load_config
from pipeline.search.prepare import study_experiment, warmup_example

CONFIG = ROOT / "configs" / "task_api.yaml"
SETTING = {"num_ctx": 1024, "num_predict": 64, "temperature": 0.0, "top_p": 1.0, "top_k": 40, "few_shot": 2,
           "prompt_variant": "compact", "example_selection": "static", "format": "schema"}
GOODPUT_LIMIT_MS = 2000.0


def _plan(backend: Any) -> tuple[TrialPlan, list]:
    config = load_config(CONFIG)
    experiment = study_experiment(config)
    prompts = load_prompts(config.prompts, experiment)
    return TrialPlan(prompts=prompts, backend=backend, scorer=experiment.scorer,
                     warmup=warmup_example(experiment, prompts)), experiment.split("dev")


def load_grid(*, slots: tuple[int, ...], clients: tuple[int, ...], requests: int,
              reverse: bool = False) -> list[dict[str, Any]]:
    rows = []
    backend = LlamaServerBackend(timeout_s=300)
    try:
        plan, dev = _plan(backend)
        examples = dev[:requests]
        for parallel in (slots[::-1] if reverse else slots):
            for concurrency in (clients[::-1] if reverse else clients):
                settings = settings_of({**SETTING, "parallel": parallel, "concurrency": concurrency}, seed=0)
                outcome = run_trial(settings, examples, plan)
                metrics = summarize(outcome.records, span_s=outcome.span_s, slos={"latency_ms": GOODPUT_LIMIT_MS})
                rows.append({"parallel": parallel, "concurrency": concurrency, "requests": len(outcome.records),
                             "failed": metrics["failed_requests"], "restarts": outcome.model_loads,
                             **{k: metrics[k] for k in ("throughput_rps", "output_tokens_per_s", "goodput_rps",
                                                        "latency_p50_ms", "latency_p95_ms", "decode_tokens_per_s",
                                                        "field_accuracy", "schema_valid_rate")}})
    finally:
        backend.close()
    return sorted(rows, key=lambda r: (r["parallel"], r["concurrency"]))


_SHOWN = ("throughput_rps", "output_tokens_per_s", "goodput_rps", "latency_p50_ms", "latency_p95_ms",
          "decode_tokens_per_s")


def _mean_of_passes(passes: list[list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """Each cell's mean over the passes, with every pass's values beside it (``<metric>_passes``)."""
    rows = []
    for cells in zip(*passes):
        row = dict(cells[0])
        for key in _SHOWN:
            row[f"{key}_passes"] = [c[key] for c in cells]
            row[key] = float(np.mean(row[f"{key}_passes"]))
        rows.append(row)
    return rows


def batched_bench(batches: tuple[int, ...]) -> list[dict[str, float]]:
    """llama-batched-bench's aggregate speeds for ``batches`` sequences of a 128-token prompt and 64 new tokens."""
    bench = find_binary().parent / "llama-batched-bench"
    command = [str(bench), "-m", str(bundled_model_path()), "-c", "4096", "-b", "2048", "-ub", "512", "-npp", "128",
               "-ntg", "64", "-npl", ",".join(map(str, batches)), "--no-repack"]
    out = subprocess.run(command, capture_output=True, text=True, timeout=600, check=True).stdout
    rows = []
    for line in out.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) >= 10 and re.fullmatch(r"\d+", cells[0]):
            pp, tg, b = (int(c) for c in cells[:3])
            rows.append({"batch": b, "prompt_tokens": pp, "new_tokens": tg, "prefill_tokens_per_s": float(cells[5]),
                         "decode_tokens_per_s": float(cells[7]), "total_tokens_per_s": float(cells[9])})
    return rows


def http_overhead(*, requests: int) -> dict[str, Any]:
    embedded, server = EmbeddedBackend(threads=None), LlamaServerBackend(timeout_s=300)
    try:
        plan, dev = _plan(embedded)
        settings = settings_of(SETTING, seed=0)
        result = measure_side_by_side(Arm("embedded", settings, plan),
                                      Arm("llama-server", settings, replace(plan, backend=server)), dev[:requests])
    finally:
        embedded.close()
        server.close()
    inproc, http = result.outcomes["embedded"].records, result.outcomes["llama-server"].records
    diff = np.array([b.latency_ms - a.latency_ms for a, b in zip(inproc, http) if not (a.failed or b.failed)])
    outside = np.array([r.latency_ms - r.server_ms for r in http if r.server_ms is not None])
    same = sum(a.answer == b.answer for a, b in zip(inproc, http))
    return {"requests": len(diff), "embedded_p50_ms": float(np.median([r.latency_ms for r in inproc])),
            "server_p50_ms": float(np.median([r.latency_ms for r in http])),
            "added_ms_median": float(np.median(diff)), "added_ms_p95": float(np.percentile(diff, 95)),
            "outside_server_timings_ms_median": float(np.median(outside)),
            "outside_server_timings_ms_p95": float(np.percentile(outside, 95)),
            "same_answers": same, "ttft_p50_ms": {"embedded": float(np.median([r.ttft_ms for r in inproc])),
                                                  "llama-server": float(np.median([r.ttft_ms for r in http]))}}


def run(*, out: Path, smoke: bool = False) -> Path:
    slots, clients = ((1, 2), (1, 2)) if smoke else ((1, 2, 4), (1, 2, 4))
    requests = 4 if smoke else 24
    passes = [load_grid(slots=slots, clients=clients, requests=requests, reverse=reverse)
              for reverse in ((False,) if smoke else (False, True))]
    grid = _mean_of_passes(passes)
    bench = batched_bench(clients)
    overhead = http_overhead(requests=3 if smoke else 30)
    single = next(r for r in bench if r["batch"] == 1)
    best = max(bench, key=lambda r: r["decode_tokens_per_s"])
    gain = best["decode_tokens_per_s"] / single["decode_tokens_per_s"]
    alone = float(np.median([r["decode_tokens_per_s"] for r in grid if r["concurrency"] == 1]))
    bound = alone * gain
    top = max(grid, key=lambda r: r["throughput_rps"])
    result = {"setting": SETTING, "goodput_limit_ms": GOODPUT_LIMIT_MS, "grid": grid, "passes": passes,
              "batched_bench": bench,
              "batch_gain": gain, "output_tokens_per_s_bound": bound, "best": top, "http_overhead": overhead}
    lines = ["# Serving under load (llama-server)", "",
             f"Task API, one setting ({SETTING['num_predict']} tokens, {SETTING['few_shot']} shots, "
             f"`{SETTING['format']}`), {requests} dev requests per cell, SmolLM2-135M Q4_1, goodput limit "
             f"{GOODPUT_LIMIT_MS:.0f} ms per request; mean of {len(passes)} passes (each pass in brackets).", "",
             "| parallel | clients | req/s | out tok/s | goodput req/s | p50 ms | p95 ms | decode tok/s per request |",
             "|---|---|---|---|---|---|---|---|"]
    lines += [f"| {r['parallel']} | {r['concurrency']} | " + " | ".join(
        f"{r[k]:.{d}f} ({', '.join(f'{v:.{d}f}' for v in r[f'{k}_passes'])})"
        for k, d in zip(_SHOWN, (2, 1, 2, 0, 0, 1))) + " |" for r in grid]
    lines += ["", "llama-batched-bench (128-token prompt, 64 new tokens per sequence):", "",
              "| sequences | decode tok/s | prefill tok/s |", "|---|---|---|"]
    lines += [f"| {r['batch']} | {r['decode_tokens_per_s']:.1f} | {r['prefill_tokens_per_s']:.1f} |" for r in bench]
    lines += ["", f"- batching gain at best ×{gain:.2f} ({best['batch']} sequences); bound on output tokens/s: "
                  f"{alone:.1f} (one request's decode speed, median of the one-client cells) × {gain:.2f} = "
                  f"{bound:.1f}",
              f"- highest throughput {top['throughput_rps']:.2f} req/s at parallel {top['parallel']}, "
              f"{top['concurrency']} clients ({top['output_tokens_per_s']:.1f} output tok/s)",
              "", "What the HTTP server adds (same setting, one slot, one client, interleaved):", "",
              f"- p50 embedded {overhead['embedded_p50_ms']:.0f} ms, llama-server {overhead['server_p50_ms']:.0f} "
              f"ms; per request llama-server minus embedded: median {overhead['added_ms_median']:+.1f} ms, p95 "
              f"{overhead['added_ms_p95']:+.1f} ms ({overhead['requests']} requests)",
              f"- llama-server wall clock minus its own timings (HTTP, JSON, streaming, grammar setup): median "
              f"{overhead['outside_server_timings_ms_median']:.1f} ms, p95 "
              f"{overhead['outside_server_timings_ms_p95']:.1f} ms",
              f"- identical answers: {overhead['same_answers']} of {overhead['requests']}"]
    return write_result("serving", result, "\n".join(lines), out)
