"""What the subcommands share: argument types, option groups, the config with command-line values, the
prepared study, and the console that prints results."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

from rich.console import Console
from rich.progress import Progress, TaskID

from pipeline.engines.registry import BACKENDS, model_key
from pipeline.search.config import StudyConfig, load_config
from pipeline.search.prepare import PreparedStudy, prepare_study

__all__ = ["Parser", "choice", "config_of", "engine_options", "optional", "positive_float", "positive_int",
           "prepare", "share", "stdout", "store_options", "whole_number", "wide_option"]


class Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, exit 2, like every other input error
        sys.stderr.write(f"error: {self.prog}: {message} (see {self.prog} --help)\n")
        raise SystemExit(2)


def whole_number(text: str) -> int:
    # MLproject passes numbers through as given; accept "3" and "3.0", not "3.5".
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if not value.is_integer():
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number")
    return int(value)


def positive_int(text: str) -> int:
    value = whole_number(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} must be 1 or more")
    return value


def optional(parse: Callable[[str], object]) -> Callable[[str], object]:
    """An empty value (an MLproject parameter left at its default "") means the option was not given."""
    def parse_or_none(text: str) -> object:
        return None if text == "" else parse(text)

    parse_or_none.__name__ = parse.__name__  # argparse names the type in its error messages
    return parse_or_none


def choice(options: tuple[str, ...]) -> Callable[[str], str]:
    """One of ``options`` (argparse's ``choices`` would refuse the empty value an MLproject default passes)."""
    def choice(text: str) -> str:
        if text not in options:
            raise argparse.ArgumentTypeError(f"{text!r} is not one of {', '.join(options)}")
        return text

    return choice


def number(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None


def positive_float(text: str) -> float:
    value = number(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"{text} must be greater than 0")
    return value


def share(text: str) -> float:
    value = number(text)
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"{text} must be between 0 and 1")
    return value


def engine_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", type=Path, default=Path("configs/task_api.yaml"), help="study config YAML")
    parser.add_argument("--backend", type=optional(choice(BACKENDS)),
                        help=f"inference backend: {', '.join(BACKENDS)} (default: the config's)")
    parser.add_argument("--model", help="the model: an Ollama model name (ollama, auto), a GGUF file (embedded, "
                                        "llama-server; default: the bundled SmolLM2-135M-Instruct) or the model id "
                                        "an OpenAI-compatible server serves (openai; default: its only one)")
    parser.add_argument("--host", help="server URL: Ollama's (default: $OLLAMA_HOST or http://127.0.0.1:11434) or "
                                       "an OpenAI-compatible one, with /v1 (openai)")
    parser.add_argument("--pull", action="store_true", default=None,
                        help="pull the Ollama model when the server does not have it")
    parser.add_argument("--threads", type=optional(positive_int),
                        help="CPU threads of the engine (default: the config's, else every core); workers sharing "
                             "one machine should split its cores")


def wide_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--wide", action="store_true",
                        help="print the front with every setting and metric as its own column (wide terminals)")


def request_options(parser: argparse.ArgumentParser, *, split: str, limit: str) -> None:
    """Which requests a command outside a study measures: the split (default ``split``), how many (``limit``: what
    none means) and how many passes."""
    parser.add_argument("--split", choices=("dev", "holdout"), default=split, help="requests to measure on")
    parser.add_argument("--limit", type=positive_int,
                        help=f"requests, taken in turn from each label (default: {limit})")
    parser.add_argument("--repetitions", type=positive_int, default=1, help="passes over the requests")


def store_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--storage", help="Optuna storage URL (default: sqlite optuna.db next to mlflow.db)")
    parser.add_argument("--tracking-uri",
                        help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI or sqlite:///mlflow.db)")
    parser.add_argument("--experiment-name", help="MLflow experiment name")


def config_of(args: argparse.Namespace, **sections: dict) -> StudyConfig:
    config = load_config(args.config)
    backend = args.backend or config.engine.backend
    return config.with_overrides(
        # empty values (an MLproject parameter left at its default) mean "not given"
        engine={"backend": args.backend, model_key(backend): args.model or None, "host": args.host or None,
                "pull": args.pull, "threads": args.threads},
        study={"storage": args.storage or None, **sections.pop("study", {})},
        tracking={"experiment_name": args.experiment_name or None},
        **sections,
    )


def prepare(args: argparse.Namespace, config: StudyConfig, console: Console) -> PreparedStudy:
    with Progress(console=console, transient=True) as pulls:
        prepared = prepare_study(config, tracking_uri=args.tracking_uri or None, on_pull=pull_progress(pulls))
    console.print(f"backend: {prepared.backend_choice}", highlight=False, soft_wrap=True)
    return prepared


def stdout() -> Console:
    return Console(width=None if sys.stdout.isatty() else 200)


def pull_progress(progress: Progress) -> Callable[[str, int | None, int | None], None]:
    tasks: dict[str, TaskID] = {}

    def update(status: str, completed: int | None, total: int | None) -> None:
        if status not in tasks:
            tasks[status] = progress.add_task(f"ollama pull: {status}", total=total)
        progress.update(tasks[status], completed=completed or 0, total=total)

    return update
