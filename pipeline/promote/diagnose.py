"""``pipeline diagnose``: the method's first two steps on what is served today, without a study: measure it, and
name where its time goes.

One setting written out in full (the config's baseline, or a settings file) runs over the job's requests through
the study's own code path, and the report gathers what the other commands spread over trials: the latency
distribution with its intervals, the split of the time (prefill, decode, the rest), memory, cost at the config's
price, the answers' accuracy, the bottleneck named by :mod:`pipeline.measure.bottleneck`, and which settings of the
config's search space act on it (its levers). Recorded as one MLflow run
(:class:`pipeline.tracking.promotion.SingleRun`) with the requests' table.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

from pipeline.engines.settings import settings_of
from pipeline.errors import InputError
from pipeline.measure.bottleneck import LEVER_SETTINGS, Verdict, verdict
from pipeline.measure.metrics import measured_metrics
from pipeline.measure.runner import run_trial
from pipeline.measure.tables import requests_frame
from pipeline.search.config import ParamSpec
from pipeline.search.objectives import request_slos
from pipeline.search.prepare import PreparedStudy, check_point
from pipeline.search.study import trial_plan
from pipeline.tracking.promotion import SingleRun

__all__ = ["Diagnosis", "diagnose"]


@dataclass(frozen=True)
class Diagnosis:
    name: str
    settings: dict[str, Any]
    metrics: dict[str, float]
    verdict: Verdict
    levers: dict[str, ParamSpec]  # the settings the config searches that act on the bottleneck
    requests: int
    run_id: str


def diagnose(prepared: PreparedStudy, name: str, values: dict[str, Any], *, split: str, limit: int | None,
             repetitions: int, experiment_name: str, on_request: Callable[[], None] = lambda: None) -> Diagnosis:
    """Measure the setting ``values`` (called ``name``) on ``split`` and diagnose it (see the module docstring).

    Raises:
        InputError: the setting does not suit the job's files or does not fit its context.
        PipelineError: the tracking store failed.
    """
    config, experiment = prepared.config, prepared.experiment
    check_point(config, experiment, prepared.prompts, values, name)
    examples = experiment.split(split, limit)
    settings = settings_of(values, seed=config.study.seed)
    outcome = run_trial(settings, examples, replace(trial_plan(prepared), repetitions=repetitions, abort_on=()),
                        on_request=on_request)
    if outcome.infeasible:
        raise InputError(f"{name}: {outcome.infeasible}")
    metrics = measured_metrics(outcome.records, seed=config.study.seed, model_loads=outcome.model_loads,
                               model_load_ms=outcome.model_load_ms, span_s=outcome.span_s,
                               slos=request_slos(config.constraints), resources=outcome.resources,
                               price_per_hour=config.cost.per_hour)
    found = verdict(metrics, concurrency=settings.concurrency, slots=settings.server.get("parallel", 1))
    levers = {lever: spec for lever in LEVER_SETTINGS.get(found.kind, ())
              if (spec := config.search_space.get(lever)) is not None and _searched(spec)}
    run = SingleRun.start(prepared.tracking_uri, experiment_name=experiment_name, beside_run=None,
                          run_name=f"diagnose {name}",
                          tags={"kind": "diagnosis", "experiment": experiment.name, "split": split,
                                "bottleneck": found.sentence, **prepared.backend.describe(), **outcome.tags})
    run.log(params={**values, "requests": len(outcome.records)}, metrics=metrics)
    run.log_table(requests_frame(outcome.records), "requests.json")
    run.finish()
    return Diagnosis(name, values, metrics, found, levers, len(outcome.records), run.run_id)


def _searched(spec: ParamSpec) -> bool:
    """Whether the search space lets a study change the setting (a range, or more than one choice)."""
    return spec.kind in ("int", "float") or len(spec.choices) > 1
