"""Compare the Pareto fronts of several studies of the same objectives.

Each study's trials come from its Optuna storage; its front is Optuna's (feasible trials only). All fronts
are measured against one shared reference: per objective, the best (ideal) and worst (nadir) values over the
feasible trials of every study. Objectives are scaled so the ideal is 0 and the reference point, the nadir
pushed 10% of the range further out, is 1; the hypervolume of a front is then the share of that unit box it
dominates (0 to 1, larger is better), comparable across the studies of one comparison. ``coverage(A, B)`` is
the share of B's front that some point of A's front weakly dominates (Zitzler's C metric): 1 means A's front
is everywhere at least as good as B's.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import permutations

import numpy as np
import optuna
import pandas as pd

from pipeline.errors import ConfigError, InputError, redact_url
from pipeline.measure.registry import Objective
from pipeline.search._optuna import hypervolume
from pipeline.search.config import EvaluationConfig
from pipeline.search.drift import machine_note
from pipeline.search.fronts import front_frame, trials_frame
from pipeline.search.storage import open_storage
from pipeline.search.trials import DEFINITION, PARENT_RUN, REFERENCE

__all__ = ["Comparison", "StudyFront", "compare", "coverage", "load_fronts", "normalized_hypervolume",
           "to_minimization"]

_MARGIN = 0.1


@dataclass(frozen=True)
class StudyFront:
    name: str
    objectives: tuple[Objective, ...]
    trials: pd.DataFrame
    front: pd.DataFrame
    parent_run_id: str | None


@dataclass(frozen=True)
class Comparison:
    objectives: tuple[Objective, ...]
    summary: pd.DataFrame      # one row per study: trials, feasible, front size, hypervolume
    coverage: pd.DataFrame     # coverage.loc[a, b]: share of b's front weakly dominated by a's front
    ideal: dict[str, float]
    reference: dict[str, float]
    notes: tuple[str, ...] = ()  # studies whose latencies come from different machine states (pipeline.search.drift)


def _objectives(study: optuna.Study) -> tuple[Objective, ...]:
    text = study.user_attrs.get(DEFINITION, {}).get("objectives")
    if not text:
        raise InputError(f"study {study.study_name!r} was not recorded by this tool (no objectives); "
                         "compare studies run with `pipeline study`")
    return tuple(Objective(*item.rsplit(":", 1)) for item in text.split(","))


def load_fronts(names: list[str], storage: str) -> list[StudyFront]:
    """Load the trials and front of each named study.

    Raises:
        InputError: a study is missing from the storage, named twice, or has other objectives than the first.
    """
    if len(set(names)) != len(names):
        raise ConfigError(f"a study is named twice in {', '.join(names)}; name each once")
    opened = open_storage(storage)
    known = optuna.get_all_study_names(opened)
    fronts = []
    for name in names:
        if name not in known:
            raise InputError(f"no study {name!r} in {redact_url(storage)} (studies there: "
                             f"{', '.join(sorted(known)) or 'none'}); run `pipeline study` first or pass the "
                             "--storage it used")
        study = optuna.load_study(study_name=name, storage=opened)
        objectives = _objectives(study)
        if fronts and objectives != fronts[0].objectives:
            def show(o: tuple[Objective, ...]) -> str:
                return ", ".join(f"{x.direction} {x.metric}" for x in o)

            raise InputError(f"studies {fronts[0].name!r} and {name!r} have different objectives "
                             f"({show(fronts[0].objectives)} vs {show(objectives)}); compare studies that "
                             "optimise the same objectives")
        trials = trials_frame(study, objectives)
        front = front_frame(trials, objectives)
        fronts.append(StudyFront(name, objectives, trials, front, study.user_attrs.get(PARENT_RUN)))
    return fronts


def to_minimization(values: np.ndarray, objectives: tuple[Objective, ...]) -> np.ndarray:
    """Objective values with maximised ones negated, so that smaller is better everywhere."""
    signs = np.array([-o.sign for o in objectives])
    return values * signs


def _values(frame: pd.DataFrame, objectives: tuple[Objective, ...]) -> np.ndarray:
    if frame.empty:
        return np.empty((0, len(objectives)))
    return frame[[o.metric for o in objectives]].to_numpy(dtype=float)


def normalized_hypervolume(points: np.ndarray, ideal: np.ndarray, reference: np.ndarray) -> float:
    """Hypervolume of minimisation ``points`` in the box from ``ideal`` (0) to ``reference`` (1)."""
    if len(points) == 0:
        return 0.0
    scaled = (points - ideal) / (reference - ideal)
    inside = scaled[np.all(scaled < 1.0, axis=1)]
    return hypervolume(inside, np.ones(points.shape[1])) if len(inside) else 0.0


def coverage(a: np.ndarray, b: np.ndarray) -> float:
    """Share of minimisation points ``b`` weakly dominated by some point of ``a`` (NaN when ``b`` is empty)."""
    if len(b) == 0:
        return float("nan")
    if len(a) == 0:
        return 0.0
    dominated = (a[:, None, :] <= b[None, :, :]).all(axis=2).any(axis=0)
    return float(dominated.mean())


def compare(fronts: list[StudyFront]) -> Comparison:
    """Hypervolumes against one shared reference point, and pairwise coverage of the fronts."""
    objectives = fronts[0].objectives
    feasible = [to_minimization(_values(f.trials[f.trials["feasible"]] if not f.trials.empty else f.trials, objectives),
                        objectives) for f in fronts]
    pooled = np.vstack(feasible)
    if len(pooled) == 0:
        raise InputError(f"no feasible trials in {', '.join(f.name for f in fronts)}: nothing to compare")
    ideal, nadir = pooled.min(axis=0), pooled.max(axis=0)
    spread = np.where(nadir > ideal, nadir - ideal, 1.0)
    reference = nadir + _MARGIN * spread
    points = {f.name: to_minimization(_values(f.front, objectives), objectives) for f in fronts}
    summary = pd.DataFrame([{
        "study": f.name,
        "trials": len(f.trials),
        "feasible": int(f.trials["feasible"].sum()) if not f.trials.empty else 0,
        "front_size": len(f.front),
        "hypervolume": normalized_hypervolume(points[f.name], ideal, reference),
        "mlflow_parent_run_id": f.parent_run_id,
    } for f in fronts])
    names = [f.name for f in fronts]
    matrix = pd.DataFrame(np.nan, index=names, columns=names)
    for a, b in permutations(names, 2):
        matrix.loc[a, b] = coverage(points[a], points[b])
    signs = {o.metric: -o.sign for o in objectives}
    as_given = {o.metric: i for i, o in enumerate(objectives)}
    return Comparison(
        objectives=objectives, summary=summary, coverage=matrix,
        ideal={m: float(ideal[i] * signs[m]) for m, i in as_given.items()},
        reference={m: float(reference[i] * signs[m]) for m, i in as_given.items()},
        notes=_machine_states(fronts),
    )


def _machine_states(fronts: list[StudyFront]) -> tuple[str, ...]:
    """For each study after the first, a sentence when its trials ran at another machine speed than the first
    study's (the median of their drift references, where drift control measured one)."""
    def reference(front: StudyFront) -> float | None:
        column = front.trials.get(REFERENCE)
        return None if column is None or column.dropna().empty else float(column.dropna().median())

    first = fronts[0]
    notes = (machine_note((f"study {first.name!r}", reference(first)), (f"study {f.name!r}", reference(f)),
                          EvaluationConfig().drift_threshold) for f in fronts[1:])
    return tuple(note for note in notes if note)
