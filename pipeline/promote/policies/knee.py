"""``knee``: the front point nearest the ideal, each objective scaled over every feasible setting measured."""

from __future__ import annotations

import numpy as np

from pipeline.measure.registry import Objective
from pipeline.promote.policies.base import (
    ERROR_RATE,
    BasePolicy,
    Choice,
    Options,
    beating_baseline,
    knee_index,
    preferred_tie,
    require_front,
)
from pipeline.search.compare import to_minimization
from pipeline.search.snapshot import StudySnapshot


class Knee(BasePolicy):
    name = "knee"
    sentence = ("the front point nearest the ideal, each objective scaled over every feasible setting the study "
                "measured, among the points that beat the baseline on every objective")
    needs = ()

    def choose(self, study: StudySnapshot, objectives: tuple[Objective, ...], options: Options, *,
               alpha: float = ERROR_RATE) -> Choice:
        pool, why = beating_baseline(study, require_front(study), objectives)
        points = to_minimization(np.array([t.values for t in pool], dtype=float), objectives)
        seen = to_minimization(np.array([t.values for t in study.measured if t.complete and t.feasible
                                         and t.values is not None], dtype=float).reshape(-1, len(objectives)),
                               objectives)
        return preferred_tie(study, pool[knee_index(points, seen)], pool, objectives, why, options.prefer,
                             alpha=alpha)


POLICY = Knee()
