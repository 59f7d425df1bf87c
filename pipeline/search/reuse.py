"""Settings proposed again: answered from the earlier measurement instead of measured twice."""

from __future__ import annotations

from collections.abc import Callable

import optuna

from pipeline.search.fronts import measured_trials
from pipeline.search.trials import METRICS, REMEASURES, REUSED, TOPS_UP

__all__ = ["REUSE_LIMIT", "reuse_measurement"]

# Proposals in a row of settings already measured after which a study stops: the space looks exhausted.
REUSE_LIMIT = 25


def reuse_measurement(study: optuna.Study, trial: optuna.Trial, *,
                      resume: Callable[[optuna.trial.FrozenTrial], bool] = lambda earlier: False) -> bool:
    """Tell ``trial`` the outcome of an earlier trial with the same settings, if one was measured.

    Samplers propose settings they have tried before, often in a space of choices only. Measuring one again
    spends a trial on a repeat, and the luckier of two noisy measurements could reach the front; answering
    with the earlier values is Optuna's advice for duplicates. The trial is COMPLETE with the user attr
    ``same_as`` (the earlier trial's number), has no MLflow run, and does not count toward the target.

    An earlier trial that ``resume`` accepts (one racing stopped, no longer dominated) is not an answer: the
    trial measures the rest of its requests instead (``pipeline.search.topup``). Nor is a trial enqueued to top one
    up or to measure one again.

    Returns:
        Whether the trial was answered.
    """
    if TOPS_UP in trial.user_attrs or REMEASURES in trial.user_attrs:
        return False
    earlier = next((t for t in measured_trials(study) if t.params == trial.params), None)
    if earlier is None or resume(earlier):
        return False
    for name, value in earlier.constraints.items():
        trial.set_constraint(name, value)
    trial.set_user_attr(REUSED, earlier.number)
    trial.set_user_attr(METRICS, earlier.user_attrs.get(METRICS, {}))
    study.tell(trial, earlier.values)
    return True
