"""``pipeline init``: write a new job's files."""

from __future__ import annotations

import argparse
from pathlib import Path

from rich.console import Console

from pipeline.commands.options import stdout
from pipeline.job.scaffold import scaffold

__all__ = ["add_parser", "run"]


def add_parser(commands: argparse._SubParsersAction) -> None:
    init = commands.add_parser("init", help="write a new job's files: experiment, prompts and config")
    init.add_argument("name", help="the job's name: experiments/NAME, prompts/NAME, configs/NAME.yaml")
    init.add_argument("--root", type=Path, default=Path("."), help="the project folder (default: here)")


def run(args: argparse.Namespace, console: Console) -> int:
    written = scaffold(args.name, args.root)
    out = stdout()
    for path in written:
        out.print(f"wrote {path}", markup=False, highlight=False)
    config = next(p for p in written if p.suffix == ".yaml" and p.parent.name == "configs")
    out.print(f"Write your schema, labelled requests and prompts, then run: python -m pipeline study --config "
              f"{config}", markup=False, highlight=False)
    return 0
