"""Pipeline overhead: study wall time minus the time inside engine calls, as a share of the wall time.

``python -m benchmarks overhead`` runs the default study (``configs/task_api.yaml``) in process with MLflow
tracking on (sqlite in a temporary folder) and an outside clock around every engine call (model loads, token
counts, requests, warm-ups). What is left is the pipeline's own time; it is broken down by timing the
tracking, sampler and scoring calls the same way. Target: at most 1% of the study's wall time.

Costs paid once per process and per store — creating the MLflow and Optuna databases (MLflow runs its schema
migrations), first imports — are measured apart, by a one-trial study run first in the same folder: they do
not grow with a study, and every study after the first in a store does not pay the database part.
"""

from __future__ import annotations

import contextlib
import tempfile
import time
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import optuna

from benchmarks.common import ROOT, run_real_study, write_result
from pipeline.job.scoring import Scorer
from pipeline.measure import runner
from pipeline.search import study as study_module
from pipeline.search.config import load_config
from pipeline.tracking.runs import StudyTracker

CONFIG = ROOT / "configs" / "task_api.yaml"


@contextlib.contextmanager
def timed(targets: dict[str, tuple[Any, str]], spent: dict[str, float]) -> Iterator[None]:
    """Add the time spent in each ``(owner, attribute)`` function to ``spent[label]`` while inside."""
    originals = []
    for label, (owner, name) in targets.items():
        original = getattr(owner, name)
        originals.append((owner, name, vars(owner)[name]))  # as stored: a classmethod stays one

        def wrapper(*args: Any, __original: Any = original, __label: str = label, **kwargs: Any) -> Any:
            start = time.perf_counter()
            try:
                return __original(*args, **kwargs)
            finally:
                spent[__label] += time.perf_counter() - start
        setattr(owner, name, wrapper)
    try:
        yield
    finally:
        for owner, name, original in originals:
            setattr(owner, name, original)


def measure(*, trials: int, limit: int | None, profile: Path | None = None) -> dict[str, Any]:
    # fixed-size trials (no racing), as its published figures were measured
    config = load_config(CONFIG).with_overrides(evaluation={"stages": []})
    if limit:
        config = config.with_overrides(evaluation={"limit": limit})
    spent: dict[str, float] = defaultdict(float)
    targets = {f"mlflow: {name}": (StudyTracker, name) for name in
               ("open", "log_study", "start_trial", "finish_trial", "log_front", "finish", "close_failed_runs")}
    targets.update({"optuna: ask": (optuna.Study, "ask"), "optuna: tell": (optuna.Study, "tell"),
                    "metrics and intervals": (study_module, "trial_values"),
                    "render prompts": (runner, "prepare_requests"), "score answers": (Scorer, "score")})
    with tempfile.TemporaryDirectory() as folder:
        first = replace(config, study=replace(config.study, name="first"),
                        evaluation=replace(config.evaluation, limit=2))
        _, first_wall, first_clock = run_real_study(first, trials=1, folder=Path(folder))
        with timed(targets, spent):
            report, wall, clock = run_real_study(config, trials=trials, folder=Path(folder), profile=profile)
    engine = clock.total_ms() / 1000
    requests = sum(1 for name, _ in clock.calls if name == "generate")
    return {"trials": trials, "requests_per_trial": limit or config.evaluation.limit, "engine_calls": requests,
            "wall_s": wall, "engine_s": engine, "overhead_s": wall - engine, "overhead_share": (wall - engine) / wall,
            "breakdown_s": dict(sorted(spent.items(), key=lambda kv: -kv[1])), "front_size": len(report.front),
            "first_study": {"trials": 1, "requests_per_trial": 2, "wall_s": first_wall,
                            "engine_s": first_clock.total_ms() / 1000,
                            "overhead_s": first_wall - first_clock.total_ms() / 1000}}


def run(*, out: Path, smoke: bool = False, profile: Path | None = None) -> Path:
    result = measure(trials=2, limit=2, profile=profile) if smoke else measure(trials=12, limit=None, profile=profile)
    result["target"] = 0.01
    lines = ["# Pipeline overhead", "",
             f"Default study, {result['trials']} trials x {result['requests_per_trial']} requests, MLflow on "
             "(sqlite), embedded engine.", "",
             f"- study wall time {result['wall_s']:.1f} s, inside engine calls {result['engine_s']:.1f} s "
             f"({result['engine_calls']} requests incl. warm-up)",
             f"- overhead {result['overhead_s']:.2f} s = **{result['overhead_share']:.2%}** of the wall time "
             f"(target: at most {result['target']:.0%})",
             f"- paid once, by the one-trial study run first in the new folder (databases created, first "
             f"imports): {result['first_study']['overhead_s']:.2f} s outside engine calls", "",
             "| where | seconds |", "|---|---|"]
    lines += [f"| {label} | {seconds:.3f} |" for label, seconds in result["breakdown_s"].items()]
    return write_result("overhead", result, "\n".join(lines), out)
