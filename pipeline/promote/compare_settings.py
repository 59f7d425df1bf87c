"""``pipeline compare-settings``: two settings written out in full, measured side by side outside any study.

For a user who wants to check one change by hand (another prompt, constrained decoding on): both settings run
interleaved on the same requests (:mod:`pipeline.measure.sidebyside`), each on a backend of its own, and the second
is compared with the first as promotion compares a candidate with the baseline (:mod:`pipeline.measure.gain`). The
measurement is recorded as one MLflow run (:class:`pipeline.tracking.promotion.SingleRun`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

from pipeline.engines.base import Backend
from pipeline.engines.settings import settings_of
from pipeline.errors import InputError
from pipeline.measure.gain import Gain, accuracy_metrics, gain_frame, gain_metrics, paired_gain, slower
from pipeline.measure.metrics import measured_metrics
from pipeline.measure.sidebyside import measure_on_own_backends
from pipeline.measure.tables import side_by_side_frame
from pipeline.search.prepare import PreparedStudy, check_point
from pipeline.search.study import trial_plan
from pipeline.tracking.promotion import SingleRun

__all__ = ["SettingsComparison", "compare_settings"]


@dataclass
class SettingsComparison:
    names: tuple[str, str]
    metrics: dict[str, dict[str, float]]
    gains: list[Gain]
    requests: int
    run_id: str
    slower: str


def compare_settings(prepared: PreparedStudy, first: tuple[str, dict[str, Any]], second: tuple[str, dict[str, Any]],
                     *, split: str, limit: int | None, repetitions: int, experiment_name: str,
                     first_backend: Backend | None = None,
                     on_request: Callable[[], None] = lambda: None) -> SettingsComparison:
    """Measure ``second`` against ``first`` (each a name and its settings) on ``split``, interleaved: ``second``
    on the study's backend, ``first`` on ``first_backend`` (default: a second one made from the config).

    Raises:
        InputError: a setting does not suit the job's files or does not fit its context on these requests.
        PipelineError: the tracking store failed.
    """
    config, experiment = prepared.config, prepared.experiment
    for name, values in (first, second):
        check_point(config, experiment, prepared.prompts, values, name)
    examples = experiment.split(split, limit)
    plan = replace(trial_plan(prepared), repetitions=1, abort_on=())
    side = measure_on_own_backends((first[0], settings_of(first[1], seed=config.study.seed)),
                                   (second[0], settings_of(second[1], seed=config.study.seed)), examples, plan,
                                   engine=config.engine, first_backend=first_backend, repetitions=repetitions,
                                   on_request=on_request)
    if side.infeasible:
        raise InputError(f"{side.infeasible}; raise num_ctx or lower num_predict")
    records = {name: side.outcomes[name].records for name in (first[0], second[0])}
    metrics = {name: measured_metrics(rs, seed=config.study.seed) for name, rs in records.items()}
    gains = paired_gain(records[first[0]], records[second[0]],
                        accuracy_metrics(config.objectives, labelled=experiment.label is not None),
                        seed=config.study.seed)
    run = SingleRun.start(prepared.tracking_uri, experiment_name=experiment_name, beside_run=None,
                          run_name=f"{second[0]} vs {first[0]}",
                          tags={"kind": "settings comparison", "experiment": experiment.name, "split": split,
                                **prepared.backend.describe()})
    run.log(params={**{f"a.{k}": v for k, v in first[1].items()}, **{f"b.{k}": v for k, v in second[1].items()},
                    "a": first[0], "b": second[0], "requests": len(examples) * repetitions},
            metrics={**{f"a.{k}": v for k, v in metrics[first[0]].items()},
                     **{f"b.{k}": v for k, v in metrics[second[0]].items()}, **gain_metrics(gains)})
    run.log_table(side_by_side_frame(side), "side_by_side.json")
    run.log_table(gain_frame(gains), "gain.json")
    run.finish()
    return SettingsComparison((first[0], second[0]), metrics, gains, len(examples) * repetitions, run.run_id,
                              slower(gains, names=(first[0], second[0])))

