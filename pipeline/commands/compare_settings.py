"""``pipeline compare-settings``: two settings files measured side by side, interleaved."""

from __future__ import annotations

import argparse
from pathlib import Path

from rich.console import Console

from pipeline.commands import options
from pipeline.errors import redact_url
from pipeline.promote.compare_settings import compare_settings
from pipeline.render.tables import gain_table
from pipeline.search.config import load_settings

__all__ = ["add_parser", "run"]


def add_parser(commands: argparse._SubParsersAction) -> None:
    side = commands.add_parser("compare-settings", help="measure two settings side by side, interleaved")
    side.add_argument("first", type=Path, help="settings file (YAML: every setting) of the reference, e.g. today's")
    side.add_argument("second", type=Path, help="settings file of the setting to compare with it")
    options.engine_options(side)
    options.store_options(side)
    options.request_options(side, split="holdout", limit="all")


def run(args: argparse.Namespace, console: Console) -> int:
    config = options.config_of(args)
    first, second = ((path.stem, load_settings(path)) for path in (args.first, args.second))
    if first[0] == second[0]:
        first, second = (str(args.first), first[1]), (str(args.second), second[1])
    prepared = options.prepare(args, config, console)
    try:
        result = compare_settings(prepared, first, second, split=args.split, limit=args.limit,
                                  repetitions=args.repetitions,
                                  experiment_name=args.experiment_name or "compare-settings")
    finally:
        prepared.backend.close()
    out = options.stdout()
    a, b = result.names
    out.print(gain_table(result.gains, f"{b} against {a} ({result.requests} {args.split} requests each, "
                                       "interleaved)", names=(a, b)))
    out.print(result.slower or f"{b} is not slower than {a}", markup=False)
    out.print(f"comparison run {result.run_id} in {redact_url(prepared.tracking_uri)}", markup=False)
    return 0
