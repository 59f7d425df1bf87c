"""``pipeline compare``: the Pareto fronts of studies side by side, logged as an MLflow run."""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import pandas as pd
from rich.console import Console

from pipeline.commands.options import stdout, store_options, wide_option
from pipeline.errors import ConfigError
from pipeline.render.plots import plot_fronts, plot_fronts_html
from pipeline.render.tables import coverage_table, front_summary, front_table, hypervolume_table
from pipeline.search.compare import compare, load_fronts
from pipeline.search.fronts import SETTINGS
from pipeline.tracking.locations import resolve_stores
from pipeline.tracking.runs import log_comparison

__all__ = ["add_parser", "run"]


def add_parser(commands: argparse._SubParsersAction) -> None:
    compare = commands.add_parser("compare", help="compare the Pareto fronts of studies")
    compare.add_argument("studies", nargs="+", help="study names (or one comma-separated list)")
    wide_option(compare)
    store_options(compare)


def run(args: argparse.Namespace, console: Console) -> int:
    names = [n for text in args.studies for n in text.split(",") if n]
    if not names:
        raise ConfigError("name at least one study to compare")
    tracking_uri, storage = resolve_stores(args.tracking_uri or None, None, args.storage or None,
                                           configured_in=None, storage_where="--storage", existing=True)
    fronts = load_fronts(names, storage)
    comparison = compare(fronts)
    title = "Pareto fronts: " + " vs ".join(names)
    with tempfile.TemporaryDirectory() as folder:
        frames = {f.name: f.trials for f in fronts}
        plots = [p for p in (plot_fronts(frames, comparison.objectives, Path(folder) / "fronts.png", title=title),
                             plot_fronts_html(frames, comparison.objectives, Path(folder) / "fronts.html",
                                              title=title, settings=SETTINGS)) if p is not None]
        table = pd.concat([f.front.assign(study=f.name) for f in fronts], ignore_index=True)
        run_id, url = log_comparison(tracking_uri=tracking_uri, experiment_name=args.experiment_name or "compare",
                                     comparison=comparison, fronts=table, artifacts=plots)
    out = stdout()
    shown = front_table if args.wide else front_summary
    for front in fronts:
        out.print(shown(front.front, f"front of {front.name!r} ({len(front.front)} of {len(front.trials)} "
                                     "completed trials)",
                        settings=SETTINGS, objectives=[o.metric for o in front.objectives], trials=front.trials))
        out.print()
    out.print(hypervolume_table(comparison.summary, comparison.reference))
    out.print()
    out.print(coverage_table(comparison.coverage))  # a study with no front: "-" rather than NaN
    for note in comparison.notes:
        out.print(f"note: {note}", markup=False)
    out.print(f"comparison run {run_id}: {url}")
    return 0
