"""What the benchmarks share: loading a config's inputs, the grid of settings, records as rows, results."""

from __future__ import annotations

import cProfile
import io
import itertools
import json
import os
import platform
import time
from dataclasses import asdict, fields
from pathlib import Path
from typing import Any

import optuna
import pandas as pd
from rich.console import Console

from pipeline.engines.settings import InferenceSettings
from pipeline.job.experiment import Experiment
from pipeline.job.prompts import load_prompts
from pipeline.job.scoring import AnswerScore
from pipeline.measure.records import RequestRecord
from pipeline.measure.tables import records_from_rows
from pipeline.search.config import StudyConfig, load_config
from pipeline.search.prepare import job_defaults, prepare_study, study_experiment
from pipeline.search.space import suggest
from pipeline.search.study import run_study
from pipeline.tracking.environment import cpu_model, git_commit

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
CONFIGS = HERE / "configs"
GRID_CONFIG = CONFIGS / "grid.yaml"
GRID_DATA = HERE / "data" / "grid.csv"
# The same grid over the whole dev split (every setting x every dev request).
GRID_FULL_CONFIG = CONFIGS / "grid_full.yaml"
GRID_FULL_DATA = HERE / "data" / "grid_full.csv"
RESULTS = HERE / "results"

SCORE_COLUMNS = [f.name for f in fields(AnswerScore) if f.name not in ("fields", "error")]
TIMING_COLUMNS = ["latency_ms", "ttft_ms", "prefill_ms", "decode_ms", "decode_tokens", "prompt_tokens_estimated",
                  "prompt_tokens_engine", "output_tokens", "truncated", "failed"]


def grid_settings(config: StudyConfig) -> list[InferenceSettings]:
    """Every setting of a search space made only of choices, in a fixed order."""
    space = config.search_space
    open_ranges = [name for name, spec in space.items() if spec.kind not in ("fixed", "categorical")]
    if open_ranges:
        raise ValueError(f"{config.path}: a grid needs choices, not ranges ({', '.join(open_ranges)})")
    names = list(space)
    settings = []
    for values in itertools.product(*(space[name].choices for name in names)):
        trial = optuna.trial.FixedTrial(dict(zip(names, values)))
        settings.append(suggest(trial, space, seed=config.study.seed))
    return settings


def searched(config: StudyConfig) -> list[str]:
    """The settings a study searches over (more than one choice)."""
    return [name for name, spec in config.search_space.items() if len(spec.choices or ()) > 1 or
            spec.kind not in ("fixed", "categorical")]


def record_row(settings: InferenceSettings, record: RequestRecord, position: int) -> dict[str, Any]:
    row: dict[str, Any] = dict(settings.as_params())
    row.update({"position": position, "request_id": record.request_id})
    row.update({k: getattr(record.score, k) for k in SCORE_COLUMNS})
    row.update({k: getattr(record, k) for k in TIMING_COLUMNS})
    row["answer"] = record.answer
    return row


def read_grid(path: Path = GRID_DATA) -> pd.DataFrame:
    """The grid's rows, answers as written (an empty answer stays an empty string, "null" stays "null")."""
    return pd.read_csv(path, keep_default_na=False, na_values={name: [""] for name in TIMING_COLUMNS})


def rows_to_records(rows: pd.DataFrame, experiment: Experiment) -> list[RequestRecord]:
    """The request records of one setting back from its rows, in the order they were measured.

    Each answer is scored again with the experiment's current rules (a score is a function of the answer), so
    a replay never sees the scores of the rules the grid was measured under.

    Raises:
        ValueError: a row's request is not in the experiment's dataset.
    """
    try:
        return records_from_rows(rows.sort_values("position"), {e.id: e for e in experiment.examples},
                                 experiment.scorer)
    except KeyError as exc:
        raise ValueError(f"grid {exc.args[0]} ({experiment.dataset_path}); measure the grid again "
                         "(python -m benchmarks grid)") from None


def environment() -> dict[str, Any]:
    """Where and when a benchmark ran."""
    return {"date": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "cpu": cpu_model(), "cores": os.cpu_count(),
            "python": platform.python_version(), "git_commit": git_commit(ROOT)[:7]}


def write_result(name: str, result: dict[str, Any], report: str, out: Path) -> Path:
    """Write ``NAME.json`` and ``NAME.md`` into ``out``; return the report's path."""
    out.mkdir(parents=True, exist_ok=True)
    result = {"benchmark": name, "environment": environment(), **result}
    (out / f"{name}.json").write_text(json.dumps(result, indent=2, default=_plain) + "\n")
    path = out / f"{name}.md"
    path.write_text(report.rstrip() + "\n")
    return path


def _plain(value: Any) -> Any:
    if hasattr(value, "item"):
        return value.item()
    if hasattr(value, "__dataclass_fields__"):
        return asdict(value)
    return str(value)


def load(path: Path = GRID_CONFIG) -> StudyConfig:
    """A config with the search-space defaults that depend on its job filled in (as ``prepared.config``),
    without opening a backend."""
    config = load_config(path)
    experiment = study_experiment(config)
    return job_defaults(config, experiment, load_prompts(config.prompts, experiment))


class WallClock:
    """A backend wrapper that times every engine call from the outside, independently of the backend's clock.

    ``calls`` holds ``(method, milliseconds)`` in call order.
    """

    def __init__(self, backend: Any) -> None:
        self.backend = backend
        self.calls: list[tuple[str, float]] = []

    def __getattr__(self, name: str) -> Any:
        attribute = getattr(self.backend, name)
        if name not in ("start_trial", "count_prompt_tokens", "generate"):
            return attribute

        def timed(*args: Any, **kwargs: Any) -> Any:
            start = time.perf_counter()
            try:
                return attribute(*args, **kwargs)
            finally:
                self.calls.append((name, (time.perf_counter() - start) * 1000))
        return timed

    def total_ms(self) -> float:
        return sum(ms for _, ms in self.calls)


def run_real_study(config: StudyConfig, *, trials: int, folder: Path,
                   profile: Path | None = None) -> tuple[Any, float, WallClock]:
    """Run a study in process, tracked in ``folder`` (sqlite MLflow and Optuna), with an outside engine clock;
    ``profile``: also write cProfile statistics of ``run_study`` there.

    Returns:
        The study report, its wall time in seconds (``run_study`` alone), and the clock.
    """
    cwd = os.getcwd()
    os.chdir(folder)
    try:
        prepared = prepare_study(config, tracking_uri=f"sqlite:///{folder}/mlflow.db")
        clock = WallClock(prepared.backend)
        prepared.backend = clock
        profiler = cProfile.Profile() if profile else None
        start = time.perf_counter()
        try:
            if profiler:
                profiler.enable()
            report = run_study(prepared, trials=trials, console=Console(file=io.StringIO()))
        finally:
            if profiler:
                profiler.disable()
                profiler.dump_stats(str(profile))
            wall = time.perf_counter() - start
            clock.backend.close()
    finally:
        os.chdir(cwd)
    return report, wall, clock
