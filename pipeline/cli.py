"""Command line: ``pipeline study`` runs a study; exit 0 on success, 2 on bad input, 1 on a runtime failure."""

from __future__ import annotations

import argparse
import logging
import math
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import pandas as pd
from rich.console import Console
from rich.progress import Progress, TaskID
from rich.table import Table

from pipeline.config import BACKENDS, SAMPLERS, load_config
from pipeline.errors import PipelineError
from pipeline.study import StudyReport, prepare_study, run_study

__all__ = ["main"]

SETTING_COLUMNS = ("num_ctx", "num_predict", "temperature", "top_p", "top_k", "few_shot", "prompt_variant",
                   "example_selection", "format")
METRIC_COLUMNS = ("schema_valid_rate", "action_accuracy", "exact_match_rate", "latency_p50_ms", "latency_p95_ms",
                  "ttft_p50_ms", "decode_tokens_per_s")


HEADERS = {"num_ctx": "ctx", "num_predict": "predict", "temperature": "temp", "few_shot": "shots",
           "prompt_variant": "prompt", "example_selection": "examples", "schema_valid_rate": "valid",
           "action_accuracy": "action", "exact_match_rate": "exact", "latency_p50_ms": "p50 ms",
           "latency_p95_ms": "p95 ms", "ttft_p50_ms": "ttft ms", "decode_tokens_per_s": "tok/s"}


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, exit 2, like every other input error
        sys.stderr.write(f"error: {self.prog}: {message} (see {self.prog} --help)\n")
        raise SystemExit(2)


def _whole_number(text: str) -> int:
    # MLproject passes numbers through as given; accept "3" and "3.0", not "3.5".
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if not value.is_integer():
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number")
    return int(value)


def _positive_int(text: str) -> int:
    value = _whole_number(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} must be 1 or more")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="pipeline", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    study = commands.add_parser("study", help="run (or extend) a multi-objective study")
    study.add_argument("--config", type=Path, default=Path("configs/task_api.yaml"), help="study config YAML")
    study.add_argument("--trials", type=_positive_int, help="trials to add in this run (default: the config's)")
    study.add_argument("--backend", choices=BACKENDS, help="inference backend (default: the config's)")
    study.add_argument("--model", help="the model: an Ollama model name (ollama, auto) or a GGUF file (embedded; "
                                       "default: the bundled SmolLM2-135M-Instruct)")
    study.add_argument("--host", help="Ollama server URL (default: $OLLAMA_HOST or http://127.0.0.1:11434)")
    study.add_argument("--pull", action="store_true", default=None,
                       help="pull the Ollama model when the server does not have it")
    study.add_argument("--study-name", help="Optuna study name, also the MLflow parent run name")
    study.add_argument("--storage", help="Optuna storage URL (default: sqlite optuna.db next to mlflow.db)")
    study.add_argument("--tracking-uri", help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI or sqlite:///mlflow.db)")
    study.add_argument("--experiment-name", help="MLflow experiment name")
    study.add_argument("--sampler", choices=SAMPLERS, help="Optuna sampler")
    study.add_argument("--seed", type=_whole_number, help="seed of the sampler and the engine")
    study.add_argument("--limit", type=_positive_int, help="requests per trial, taken in turn from each action")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    console = Console(stderr=True)
    for name in ("mlflow", "alembic"):  # store migrations and the like; our own output says what matters
        logging.getLogger(name).setLevel(logging.WARNING)
    prepared = None
    try:
        config = load_config(args.config)
        backend = args.backend or config.engine.backend
        model_key = "gguf" if backend == "embedded" else "ollama_model"
        config = config.with_overrides(
            study={"name": args.study_name, "storage": args.storage, "sampler": args.sampler, "seed": args.seed},
            # empty values (an MLproject parameter left at its default) mean "not given"
            engine={"backend": args.backend, model_key: args.model or None, "host": args.host or None,
                    "pull": args.pull},
            evaluation={"limit": args.limit},
            tracking={"experiment_name": args.experiment_name},
        )
        with Progress(console=console, transient=True) as pulls:
            prepared = prepare_study(config, tracking_uri=args.tracking_uri, on_pull=_pull_progress(pulls))
        console.print(f"backend: {prepared.backend_choice}", highlight=False, soft_wrap=True)
        report = run_study(prepared, trials=args.trials or config.study.trials, console=console)
    except PipelineError as exc:
        console.print(f"[red]error:[/red] {exc}", highlight=False, soft_wrap=True)
        return exc.exit_code
    except KeyboardInterrupt:
        console.print("interrupted: the running trial was marked FAIL in Optuna and FAILED in MLflow")
        return 130
    finally:
        if prepared is not None:
            prepared.backend.close()
    _print_report(report)
    return 0


def _pull_progress(progress: Progress) -> Callable[[str, int | None, int | None], None]:
    tasks: dict[str, TaskID] = {}

    def update(status: str, completed: int | None, total: int | None) -> None:
        if status not in tasks:
            tasks[status] = progress.add_task(f"ollama pull: {status}", total=total)
        progress.update(tasks[status], completed=completed or 0, total=total)

    return update


def _print_report(report: StudyReport) -> None:
    out = Console(width=None if sys.stdout.isatty() else 200)
    front = report.front
    table = Table(title=f"Pareto front of study {report.study_name!r} "
                        f"({len(front)} of {len(report.trials)} completed trials)")
    table.add_column("trial", justify="right")
    columns = [c for c in SETTING_COLUMNS + METRIC_COLUMNS if c in front.columns]
    for column in columns:
        table.add_column(HEADERS.get(column, column), justify="right")
    for _, row in front.iterrows():
        table.add_row(str(row["number"]), *(_cell(row[c]) for c in columns))
    out.print(table)
    out.print(f"Added {report.new_trials} trials. Optuna storage: {report.storage_url}")
    out.print(f"MLflow parent run {report.parent_run_id} in {report.tracking_uri}")
    out.print(f"Browse it: mlflow ui --backend-store-uri {report.tracking_uri}   then open {report.run_url}")


def _cell(value: object) -> str:
    if isinstance(value, float):
        return "nan" if math.isnan(value) else f"{value:.3g}" if abs(value) < 100 else f"{value:.0f}"
    return "" if value is None or (isinstance(value, float) and pd.isna(value)) else str(value)


if __name__ == "__main__":
    raise SystemExit(main())
