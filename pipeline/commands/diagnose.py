"""``pipeline diagnose``: what is served today measured, and where its time goes, without a study."""

from __future__ import annotations

import argparse
import math
from pathlib import Path

from rich.console import Console

from pipeline.commands import options
from pipeline.errors import ConfigError, redact_url
from pipeline.promote.diagnose import Diagnosis, diagnose
from pipeline.search.config import ParamSpec, load_settings

__all__ = ["add_parser", "run"]


def add_parser(commands: argparse._SubParsersAction) -> None:
    found = commands.add_parser("diagnose", help="measure today's settings and name where their time goes")
    found.add_argument("--settings", type=options.optional(Path),
                       help="settings file (YAML: every setting) to diagnose (default: the config's baseline)")
    options.engine_options(found)
    options.store_options(found)
    options.request_options(found, split="dev", limit="the config's evaluation.limit")


def run(args: argparse.Namespace, console: Console) -> int:
    config = options.config_of(args)
    if args.settings is not None:
        name, values = args.settings.stem, load_settings(args.settings)
    elif config.baseline is not None:
        name, values = "baseline", config.baseline
    else:
        raise ConfigError(f"{config.path}: no settings to diagnose: add a baseline (the settings served today) to "
                          "the config, or pass --settings FILE")
    prepared = options.prepare(args, config, console)
    try:
        found = diagnose(prepared, name, values, split=args.split,
                         limit=args.limit or config.evaluation.limit, repetitions=args.repetitions,
                         experiment_name=args.experiment_name or "diagnose")
    finally:
        prepared.backend.close()
    out = options.stdout()
    for line in report_lines(found, currency=config.cost.currency):
        out.print(line, markup=False, highlight=False, width=min(out.width, 100))
    out.print(f"diagnosis run {found.run_id} in {redact_url(prepared.tracking_uri)}", markup=False,
              highlight=False, width=min(out.width, 100))
    return 0


def report_lines(found: Diagnosis, *, currency: str) -> list[str]:
    """The diagnosis in lines of at most 100 columns (a verdict's sentence is wrapped by the terminal)."""
    m = found.metrics

    def value(metric: str, digits: int = 0) -> str:
        low, high = m.get(f"{metric}_ci95_low"), m.get(f"{metric}_ci95_high")
        band = (f" [{low:.{digits}f}, {high:.{digits}f}]" if low is not None and high is not None
                and math.isfinite(low) and math.isfinite(high) else "")
        return f"{m[metric]:.{digits}f}{band}"

    lines = [f"{found.name}: {found.requests} requests",
             "latency ms: " + "  ".join(f"{label} {value(metric)}" for label, metric in
                                        (("p50", "latency_p50_ms"), ("p95", "latency_p95_ms"),
                                         ("p99", "latency_p99_ms")) if metric in m)]
    if "ttft_p50_ms" in m:
        lines.append(f"time to first token ms: p50 {m['ttft_p50_ms']:.0f}; prefill {m.get('prefill_ms_mean', 0):.0f} "
                     f"and decode {m.get('decode_ms_mean', 0):.0f} on average")
    if "prefill_share" in m:
        lines.append(f"where the time goes: prefill {m['prefill_share']:.0%}, decode {m['decode_share']:.0%}, the "
                     f"rest {m['other_share']:.0%}")
    memory = [f"{label} {m[metric]:.1f} MiB" for label, metric in
              (("peak", "memory_mb"), ("KV cache", "kv_cache_mb"), ("model", "model_mb")) if metric in m]
    if memory:
        lines.append("memory: " + ", ".join(memory))
    if "cost_per_1k_answers" in m:
        lines.append(f"cost: {m['cost_per_1k_answers']:.4g} {currency} per 1,000 answers, "
                     f"{m['cost_per_1m_output_tokens']:.4g} per million output tokens (at its measured throughput)")
    lines.append(f"answers: field accuracy {value('field_accuracy', 3)}, schema valid "
                 f"{value('schema_valid_rate', 3)}")
    lines.append(f"verdict: {found.verdict.sentence}")
    if found.levers:
        lines.append("levers in the config's search space: " + "; ".join(
            f"{name} {_spec(spec)}" for name, spec in found.levers.items()))
    elif found.verdict.kind not in ("mixed", "unknown"):
        lines.append("levers in the config's search space: none of them is searched; add them to search_space")
    return lines


def _spec(spec: ParamSpec) -> str:
    if spec.kind in ("fixed", "categorical"):
        return "{choices: [" + ", ".join(str(c) for c in spec.choices) + "]}"
    return f"{{low: {spec.low:g}, high: {spec.high:g}}}"
