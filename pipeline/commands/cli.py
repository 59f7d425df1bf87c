"""Command line: ``pipeline init``, ``import-calls``, ``study``, ``compare``, ``promote``, ``compare-settings``.

Exit codes: 0 success, 1 runtime failure, 2 bad input, 3 promotion refused.
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Sequence
from types import ModuleType

from rich.console import Console
from rich.text import Text

from pipeline.commands import compare, compare_settings, diagnose, import_calls, init, promote, study
from pipeline.commands.options import Parser
from pipeline.errors import PipelineError

__all__ = ["COMMANDS", "build_parser", "main"]

# Each subcommand is a module with ``add_parser(commands)`` and ``run(args, console) -> exit code``; a new one is
# a module and a line here (the order is the help's).
COMMANDS: dict[str, ModuleType] = {"study": study, "init": init, "import-calls": import_calls, "compare": compare,
                                   "promote": promote, "compare-settings": compare_settings, "diagnose": diagnose}


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="pipeline", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True, parser_class=Parser)
    for command in COMMANDS.values():
        command.add_parser(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    console = Console(stderr=True)
    for name in ("mlflow", "alembic"):  # store migrations and the like; our own output says what matters
        logging.getLogger(name).setLevel(logging.WARNING)
    command = COMMANDS[args.command].run
    try:
        return command(args, console)
    except KeyboardInterrupt:
        return _interrupted(console)
    except Exception as exc:
        # Ctrl-C inside a library (a store migrating its schema, a database call) can come out as that library's
        # error about the half-done work: still an interruption, not a failure.
        if _interruption(exc):
            return _interrupted(console)
        if not isinstance(exc, PipelineError):
            raise
        console.print(Text("error: ", style="red") + Text(str(exc)), highlight=False, soft_wrap=True)
        return exc.exit_code


def _interruption(exc: BaseException) -> bool:
    """Whether a KeyboardInterrupt is among the exceptions this one was raised from or while handling."""
    seen: set[int] = set()
    cause: BaseException | None = exc
    while cause is not None and id(cause) not in seen:
        if isinstance(cause, KeyboardInterrupt):
            return True
        seen.add(id(cause))
        cause = cause.__cause__ or cause.__context__
    return False


def _interrupted(console: Console) -> int:
    console.print("interrupted: a trial that was running is marked FAIL in Optuna and FAILED in MLflow; completed "
                  "trials stay recorded", highlight=False)
    return 130


if __name__ == "__main__":
    raise SystemExit(main())
