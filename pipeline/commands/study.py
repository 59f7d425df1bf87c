"""``pipeline study``: run (or extend) a multi-objective study and print its front."""

from __future__ import annotations

import argparse

from rich.console import Console

from pipeline.commands import options
from pipeline.errors import redact_url
from pipeline.promote.choose import choose_trial
from pipeline.promote.policies import policy_named
from pipeline.promote.promotion import PromotionPolicy
from pipeline.render.tables import front_summary, front_table
from pipeline.search.config import SAMPLERS
from pipeline.search.fronts import SETTINGS
from pipeline.search.snapshot import StudySnapshot
from pipeline.search.study import run_study

__all__ = ["add_parser", "run"]


def add_parser(commands: argparse._SubParsersAction) -> None:
    study = commands.add_parser("study", help="run (or extend) a multi-objective study")
    options.engine_options(study)
    options.store_options(study)
    study.add_argument("--trials", type=options.optional(options.positive_int),
                       help="trials to add in this run (default: the config's)")
    study.add_argument("--study-name", help="Optuna study name, also the MLflow parent run name")
    study.add_argument("--sampler", type=options.optional(options.choice(tuple(SAMPLERS))),
                       help=f"Optuna sampler: {', '.join(SAMPLERS)} (default: the config's)")
    study.add_argument("--seed", type=options.optional(options.whole_number),
                       help="seed of the sampler and the engine (default: the config's)")
    study.add_argument("--limit", type=options.positive_int, help="requests per trial, taken in turn from each label")
    options.wide_option(study)
    study.add_argument("--refine", type=options.optional(options.whole_number),
                       help="requests to spend topping up the front and the points tied with it, until their order "
                            "is decided (alone: no new trials; default: the config's evaluation.refine_requests)")
    study.add_argument("--finals", type=options.optional(options.whole_number), default=0,
                       help="requests to spend measuring the default policy's finalists (the front and the "
                            "baseline) on more of the dev split until its choice is decided against each, as promote "
                            "does first (alone: no new trials)")


def run(args: argparse.Namespace, console: Console) -> int:
    config = options.config_of(args, study={"name": args.study_name, "sampler": args.sampler, "seed": args.seed},
                               evaluation={"limit": args.limit})
    prepared = options.prepare(args, config, console)
    try:
        alone = args.refine is not None or bool(args.finals)
        trials = args.trials or (0 if alone else config.study.trials)
        objectives = config.objectives

        default = PromotionPolicy()  # promote's default policy and options

        def chosen(snapshot: StudySnapshot) -> int:
            return choose_trial(snapshot, objectives, default, alpha=config.evaluation.error_rate).trial.number

        report = run_study(prepared, trials=trials, console=console, refine=args.refine,
                           choose=chosen if args.finals else None, finals=args.finals or 0,
                           decide_on=policy_named(default.policy).decides_on(objectives) if args.finals else None)
    finally:
        prepared.backend.close()
    out = options.stdout()
    shown = front_table if args.wide else front_summary
    out.print(shown(report.front, f"Pareto front of study {report.study_name!r} "
                                  f"({len(report.front)} of {len(report.trials)} completed trials)",
                    settings=SETTINGS, objectives=[o.metric for o in prepared.config.objectives],
                    trials=report.trials))
    for line in report.explanation:
        out.print(f"- {line}", markup=False, highlight=False)
    if report.finals is not None:
        out.print(f"finals: {report.finals.summary()}", markup=False, highlight=False)
        for line in report.finals.lines():
            out.print(line, markup=False, highlight=False)
    out.print(f"Added {report.new_trials} trials. Optuna storage: {redact_url(report.storage_url)}",
              markup=False)
    out.print(f"MLflow parent run {report.parent_run_id} in {redact_url(report.tracking_uri)}", markup=False)
    out.print(f"Browse it: mlflow ui --backend-store-uri {redact_url(report.tracking_uri)}   then open "
              f"{report.run_url}", markup=False)
    return 0
