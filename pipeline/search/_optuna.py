"""Optuna's private API, fenced: every call this package makes past Optuna's public surface is here.

Read against optuna 5.0.0 (the version pyproject.toml pins). Each function names the private name it uses;
``tests/test_private_apis.py`` checks each against the installed Optuna, so a release that moves one fails
there, with the name, instead of deep inside a study.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import optuna
from optuna.study import StudyDirection
from optuna.trial import FrozenTrial

__all__ = ["READ_AGAINST", "hypervolume", "is_pareto_front", "pareto_front_trials", "storage_of", "trial_id"]

READ_AGAINST = "5.0.0"


def trial_id(trial: FrozenTrial | optuna.Trial) -> int:
    """The storage's id of a trial (``FrozenTrial._trial_id`` / ``Trial._trial_id``): storage calls take it, and
    Optuna has no public accessor."""
    return trial._trial_id


def storage_of(study: optuna.Study) -> optuna.storages.BaseStorage:
    """The storage a study reads and writes (``Study._storage``), with Optuna's cache around an RDB storage: the
    heartbeat and stale-trial calls need it, and Optuna has no public accessor."""
    return study._storage


def pareto_front_trials(trials: list[FrozenTrial], directions: Sequence[StudyDirection], *,
                        consider_constraint: bool) -> list[FrozenTrial]:
    """Optuna's own front of ``trials`` (``optuna.study._multi_objective._get_pareto_front_trials_by_trials``,
    what ``Study.best_trials`` uses), so that a subset of a study's trials is ranked by the same rule."""
    from optuna.study._multi_objective import _get_pareto_front_trials_by_trials

    return _get_pareto_front_trials_by_trials(trials, directions, consider_constraint=consider_constraint)


def is_pareto_front(points: np.ndarray) -> np.ndarray:
    """Which rows of a minimisation matrix are on its front (``optuna.study._multi_objective._is_pareto_front``)."""
    from optuna.study._multi_objective import _is_pareto_front

    return _is_pareto_front(points, assume_unique_lexsorted=False)


def hypervolume(points: np.ndarray, reference: np.ndarray) -> float:
    """The exact hypervolume of minimisation points against a reference point
    (``optuna._hypervolume.compute_hypervolume``: WFG beyond two objectives)."""
    from optuna._hypervolume import compute_hypervolume

    return float(compute_hypervolume(points, reference))
