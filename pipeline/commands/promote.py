"""``pipeline promote``: re-check a front point on held-out data and write its Modelfile."""

from __future__ import annotations

import argparse
import math
from pathlib import Path

from rich import box
from rich.console import Console
from rich.table import Table

from pipeline.commands import options
from pipeline.errors import ConfigError, InputError, redact_url
from pipeline.measure.bottleneck import verdict
from pipeline.measure.gain import slower
from pipeline.promote.choose import MenuRow
from pipeline.promote.policies import DEFAULT, REGISTRY, policy_named
from pipeline.promote.promotion import (
    CHAMPION,
    FINALS_REQUESTS,
    MARGIN,
    PromotionPolicy,
    PromotionRefused,
    PromotionReport,
    promote,
)
from pipeline.render.tables import gain_table
from pipeline.search.config import StudyConfig
from pipeline.search.storage import study_names
from pipeline.tracking.locations import resolve_stores

__all__ = ["add_parser", "run"]


def add_parser(commands: argparse._SubParsersAction) -> None:
    promote = commands.add_parser("promote", help="re-check a front point on held-out data and write a Modelfile")
    promote.add_argument("study", help="the study to promote from")
    options.engine_options(promote)
    options.store_options(promote)
    promote.add_argument("--policy", type=_policy, default=DEFAULT,
                         help="what to promote: " + "; ".join(f"{name}: {p.sentence}" for name, p in REGISTRY.items())
                              + f" (default: {DEFAULT})")
    promote.add_argument("--sla-p95-ms", type=options.optional(options.positive_float),
                         help="latency limit of the sla policy (also checked on held-out data)")
    promote.add_argument("--trial", type=options.optional(options.whole_number), help="trial number for --policy trial")
    promote.add_argument("--margin", type=options.share, default=MARGIN,
                         help="in the accuracy metric's units: how far below the most accurate point (accuracy "
                              "policy) or the baseline (latency policy, and the held-out check) a setting may be "
                              f"(default: {MARGIN:g}, chosen from replays: BENCHMARKS.md)")
    promote.add_argument("--repetitions", type=options.positive_int, default=2, help="passes over the held-out split")
    promote.add_argument("--finals-requests", type=options.optional(options.whole_number),
                         help="dev requests to spend first measuring the policy's finalists (the front and the "
                              "baseline) until its choice is decided against each (0: choose on the study's own; "
                              "default: " + ", ".join(f"{n} for {p}" for p, n in FINALS_REQUESTS.items()) + ")")
    promote.add_argument("--prefer", choices=("policy", "accuracy", "latency"), default="policy",
                         help="what breaks a tie the measurements could not: the policy's own pick stands "
                              "(default), or the most accurate, or the fastest of the tied points")
    promote.add_argument("--check-requests", type=options.positive_int, default=8,
                         help="held-out requests replayed through the written bundle before it is promoted")
    promote.add_argument("--registered-model", help="MLflow registered model name (default: the study name)")
    promote.add_argument("--ollama-name", help="name of the model to create on the Ollama server "
                                               "(default: the registered model name)")
    promote.add_argument("--output", type=Path, default=Path("promoted"), help="folder for Modelfile and sidecar")


def _policy(name: str) -> str:
    """A registered policy's name; an unknown one is refused with the closest name."""
    try:
        return policy_named(name).name
    except ConfigError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def run(args: argparse.Namespace, console: Console) -> int:
    policy = PromotionPolicy(policy=args.policy, sla_p95_ms=args.sla_p95_ms, trial=args.trial,
                             margin=args.margin, repetitions=args.repetitions,
                             check_requests=args.check_requests, finals_requests=args.finals_requests,
                             prefer=args.prefer,
                             registered_model=args.registered_model or None, ollama_name=args.ollama_name or None,
                             output=args.output)
    policy_named(policy.policy).check(policy)  # before anything is loaded
    config = options.config_of(args)
    _, storage = resolve_stores(args.tracking_uri or None, config.tracking.tracking_uri, config.study.storage,
                                configured_in=str(config.path), storage_where="--storage", existing=True)
    if args.study not in study_names(storage):
        raise InputError(f"no study {args.study!r} in {redact_url(storage)}: run `pipeline study` first or pass "
                         "the --storage it used")
    prepared = options.prepare(args, config, console)
    out = options.stdout()
    try:
        report = promote(prepared, args.study, policy, console=console)
    except PromotionRefused as refused:
        if refused.report is not None:  # measured before it was refused: what was measured, then why (stderr)
            _measured(out, refused.report, config, policy.policy)
        raise
    finally:
        prepared.backend.close()
    _measured(out, report, config, policy.policy)
    out.print(f"promoted trial {report.trial} of {report.study!r} as {policy.registered_model or report.study!r} "
              f"version {report.model_version} (alias {CHAMPION})")
    for note in report.notes:
        out.print(f"  note: {note}")
    out.print(f"Modelfile: {report.modelfile}   sidecar: {report.sidecar}")
    out.print(f"  ollama create {policy.registered_model or report.study} -f {report.modelfile}")
    if report.launch is not None:
        out.print(f"llama-server launch command (port 8080): {report.launch}   request defaults: in the sidecar",
                  markup=False)
    return 0


# What serving costs, with the config's price (`cost`): printed dev against held-out, and baseline against promoted.
HELD = ("cost_per_1k_answers", "cost_per_1m_output_tokens")


def _measured(out: Console, report: PromotionReport, config: StudyConfig, policy: str) -> None:
    """How the point was chosen, the gain over the baseline, dev against held-out figures and the bundle check."""
    if report.finals is not None:
        out.print(f"finals: {report.finals.summary()}", markup=False)
        for line in report.finals.lines():
            out.print(line, markup=False)
    if report.choice:
        out.print(report.choice, markup=False)
    if report.menu:
        out.print(_menu(report.menu, report, policy), width=min(out.width, 100))
    if report.gains:
        out.print(gain_table(report.gains, "the candidate against the baseline (held-out, side by side)"))
        out.print(slower(report.gains) or "the candidate is not slower than the baseline", markup=False)
    shown = dict.fromkeys([*(o.metric for o in config.objectives), *(c.metric for c in config.constraints),
                           "schema_valid_rate", "latency_p95_ms", "kv_cache_mb", "memory_mb", *HELD])
    for metric in (m for m in shown if m in report.holdout and m in report.dev):
        low, high = report.holdout.get(f"{metric}_ci95_low"), report.holdout.get(f"{metric}_ci95_high")
        band = (f" [{low:.4g}, {high:.4g}]" if low is not None and high is not None
                and math.isfinite(low) and math.isfinite(high) else "")
        out.print(f"  {metric}: dev {report.dev[metric]:.4g}, held-out {report.holdout[metric]:.4g}{band}",
                  markup=False)
    slots = report.settings.server.get("parallel", 1)
    out.print(f"  where the time goes (held-out): "
              f"{verdict(report.holdout, concurrency=report.settings.concurrency, slots=slots)}", markup=False)
    if report.baseline:  # measured beside it, one request at a time
        out.print(f"  the baseline's: {verdict(report.baseline)}", markup=False)
    for metric in HELD:  # what the served setting costs against what is served today, as measured side by side
        if report.baseline and metric in report.baseline and metric in report.holdout:
            out.print(f"  {metric} ({config.cost.currency}, held-out, one request at a time): baseline "
                      f"{report.baseline[metric]:.4g}, promoted {report.holdout[metric]:.4g}", markup=False)
    if report.check is not None:
        out.print(report.check.summary(), markup=False)


def _menu(rows: list[MenuRow], report: PromotionReport, used: str) -> Table:
    """What each policy would promote from this study, with its dev figures and its paired differences to the
    promoted point: one row a policy (``used``: the one that chose, marked), in 100 columns."""
    metric = report.accuracy or "field_accuracy"
    table = Table(title="what each policy would promote (dev; against the promoted point, paired where measured "
                        "together)", title_justify="left", box=box.SIMPLE_HEAD, pad_edge=False)
    # a study that searched the response cache: each point's share of requests served from it ("off": none)
    cached = any(r.trial is not None and "cache_hit_rate" in r.trial.metrics for r in rows)
    for column in ("policy", "trial", metric.replace("field_accuracy", "fields"), "p95 ms", *(("hits",) * cached),
                   "accuracy vs promoted", "latency vs promoted"):
        table.add_column(column, justify="left" if column == "policy" else "right")
    for row in rows:
        if row.trial is None:  # why, without the details in parentheses
            table.add_row(row.policy, "", "", "", *([""] * cached), row.unavailable.split(" (")[0], "")
            continue
        same = row.trial.number == report.trial
        hits = row.trial.metrics.get("cache_hit_rate")
        table.add_row(row.policy + (" (used)" if row.policy == used else ""), str(row.trial.number),
                      f"{row.trial.metrics.get(metric, float('nan')):.3g}",
                      f"{row.trial.metrics.get('latency_p95_ms', float('nan')):.0f}",
                      *([f"{hits:.2f}" if hits is not None else "off"] * cached),
                      "the promoted point" if same or row.accuracy is None else row.accuracy.text(),
                      "" if same or row.latency is None else row.latency.text())
    return table
