"""Finals: the points a promotion policy could pick, measured on more of the dev split until its choice is decided.

A study's trials are short; the choice of which setting to serve is made among a few of them. The **finalists**
are the front's points and the baseline (the settings served today). The policy's **choice** (a callable the
rooms above give: ``pipeline.promote.choose``) is compared with each other finalist *on the requests both
answered*, paired request by request (:func:`pipeline.measure.intervals.paired_gaps`, at the study's error rate,
``evaluation.error_rate``): the pair is **decided** when on at least one objective the interval of the difference
excludes 0 — the measurements tell the two apart — and **tied** while on every objective it holds 0
(:func:`pipeline.measure.racing.holds_zero`: the one rule of a tie, which the front table and the policies' ties
read too). The objectives are those the policy decides on (``Policy.decides_on``: the accuracy policy, its
accuracy alone).

While a rival is tied with the choice, the least measured of the two is topped up (:mod:`pipeline.search.topup`:
the next requests of the split, in the order every trial takes them, so the two keep sharing their requests),
doubling its requests within the split and the budget. A top-up is a trial of its own whose run holds every
request; the front, its ties and the choice are recomputed from it. The finals end when every rival is decided,
when the split is used up for every tied pair (then the report says "not decided" and which points remain
tied, and the policy's stated preference breaks the tie), or when the budget is spent. A study whose finalists
are already decided spends nothing.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import optuna

from pipeline.measure.intervals import paired_gaps, signed_difference
from pipeline.measure.racing import holds_zero
from pipeline.measure.records import RequestRecord
from pipeline.measure.registry import Objective
from pipeline.search.fronts import front_trials, measured_trials
from pipeline.search.snapshot import StudySnapshot
from pipeline.search.topup import TopUp
from pipeline.search.trials import BASELINE

__all__ = ["Choose", "Finalists", "Finals", "Rival", "finals_of"]

# The policy's choice among a study's points: the number of the trial it picks.
Choose = Callable[[StudySnapshot], int]


@dataclass(frozen=True)
class Rival:
    """A finalist against the choice, on the requests both answered: per objective, the choice's value minus
    the rival's (in the metric's own units) with its interval; ``decided`` when one interval excludes 0."""

    number: int
    baseline: bool
    shared: int
    differences: tuple[tuple[float, float, float], ...] | None  # (chosen − rival, low, high) per objective
    decided: bool
    requests: int                      # the rival's requests


@dataclass(frozen=True)
class Finals:
    """Where the finals stand: the choice, each rival, and the next top-up (None: nothing left to do)."""

    chosen: int
    requests: int                      # the choice's requests
    rivals: tuple[Rival, ...]
    top_up: TopUp | None
    objectives: tuple[Objective, ...]
    finalists: frozenset[tuple] = frozenset()   # every finalist so far, by its settings (see finals_of)

    @property
    def decided(self) -> bool:
        return all(r.decided for r in self.rivals)

    @property
    def tied(self) -> list[int]:
        return [r.number for r in self.rivals if not r.decided]

    def summary(self) -> str:
        """One sentence: decided against every rival, or which remain tied."""
        if not self.rivals:
            return f"trial {self.chosen} had no rival"
        if self.decided:
            return (f"trial {self.chosen} decided against every rival ({len(self.rivals)}), paired on the requests "
                    "each pair shares")
        return (f"not decided: trial {self.chosen} remains tied with trial{'s' if len(self.tied) > 1 else ''} "
                f"{', '.join(map(str, self.tied))} (the intervals of every difference hold 0"
                f"{'' if self.top_up else ' with the dev split used up or the budget spent'})")

    def lines(self) -> list[str]:
        """The choice against each rival (two lines each, to fit 100 columns): whether it is decided, on how many
        shared requests, then the paired difference on each objective with its interval."""
        out = []
        for rival in self.rivals:
            name = f"trial {rival.number}" + (" (baseline)" if rival.baseline else "")
            if rival.differences is None:
                out.append(f"  vs {name}: fewer than two shared requests")
                continue
            shown = ", ".join(f"{o.metric} {_signed(d)} [{_signed(lo)}, {_signed(hi)}]"
                              for o, (d, lo, hi) in zip(self.objectives, rival.differences))
            out.append(f"  vs {name}, {'decided' if rival.decided else 'tied'} on {rival.shared} shared requests:")
            out.append(f"    {shown}")
        return out

    def rows(self) -> list[dict[str, object]]:
        """One row per rival, for a table on the run."""
        return [{"chosen": self.chosen, "rival": r.number, "baseline": r.baseline, "shared_requests": r.shared,
                 "decided": r.decided,
                 **{f"{o.metric}_{part}": (None if r.differences is None else r.differences[i][k])
                    for i, o in enumerate(self.objectives) for k, part in enumerate(("diff", "low", "high"))}}
                for r in self.rivals]


def finals_of(study: optuna.Study, objectives: tuple[Objective, ...], choose: Choose,
              records: Callable[[optuna.trial.FrozenTrial], list[RequestRecord]], alpha: float, *, most: int,
              budget: int, seed: int = 0, kept: frozenset[tuple] = frozenset()) -> Finals:
    """Where the finals of ``study`` stand now, and the next top-up within ``budget`` requests and ``most``
    requests a trial (the split, with its repetitions).

    The finalists are the front, the baseline and every earlier finalist (``kept``, by settings: the returned
    ``finalists``): a point a top-up moved off the front by its estimates may still be tied with the choice,
    and stays until the paired measurements decide it.
    """
    snapshot = StudySnapshot.of(study, records)  # the policy may pair the requests of two points too
    chosen_number = choose(snapshot)
    measured = {t.number: t for t in measured_trials(study)}
    chosen = measured[chosen_number]
    keys = kept | {_key(t) for t in front_trials(study)} | {_key(t) for t in measured.values()
                                                           if t.user_attrs.get(BASELINE)}
    finalists = [t for t in measured.values() if _key(t) in keys and t.number != chosen_number]
    mine = records(chosen)
    rivals = []
    for trial in finalists:
        theirs = records(trial)
        gaps = paired_gaps(mine, theirs, objectives, alpha, seed=seed)
        differences = None if gaps is None else tuple(signed_difference(o, g) for o, g in zip(objectives, gaps))
        decided = differences is not None and not holds_zero(differences)
        shared = len({r.request_id for r in mine} & {r.request_id for r in theirs})
        rivals.append(Rival(trial.number, bool(trial.user_attrs.get(BASELINE)), shared, differences, decided,
                            len(theirs)))
    top_up = _next(chosen, [measured[r.number] for r in rivals if not r.decided], records, budget=budget,
                   most=most)
    return Finals(chosen_number, len(mine), tuple(rivals), top_up, objectives, frozenset(keys))


def _key(trial: optuna.trial.FrozenTrial) -> tuple:
    """A setting, whichever trial measured it last."""
    return tuple(sorted(trial.params.items()))


def _signed(value: float) -> str:
    """A difference as the reports show it: three significant digits, whole units from 100 up (no exponent)."""
    return f"{value:+.0f}" if abs(value) >= 100 else f"{value:+.3g}"


class Finalists:
    """Where the finals of a study stand, asked again after each top-up (``state(budget)``): :func:`finals_of`
    with every finalist seen so far kept."""

    def __init__(self, study: optuna.Study, objectives: tuple[Objective, ...], choose: Choose,
                 records: Callable[[optuna.trial.FrozenTrial], list[RequestRecord]], alpha: float, *, most: int,
                 seed: int = 0) -> None:
        self._study, self._objectives, self._choose, self._records = study, objectives, choose, records
        self._alpha, self._most, self._seed = alpha, most, seed
        self._kept: frozenset[tuple] = frozenset()

    def __call__(self, budget: int) -> Finals:
        now = finals_of(self._study, self._objectives, self._choose, self._records, self._alpha, most=self._most,
                        budget=budget, seed=self._seed, kept=self._kept)
        self._kept = now.finalists
        return now


def _next(chosen: optuna.trial.FrozenTrial, tied: Sequence[optuna.trial.FrozenTrial],
          records: Callable[[optuna.trial.FrozenTrial], list[RequestRecord]], *, budget: int,
          most: int) -> TopUp | None:
    """The least measured of the choice and its tied rivals, doubled within the budget and the split; None when
    nothing is tied, every tied pair has used up the split, or no budget is left."""
    if budget <= 0 or not tied:
        return None
    eligible = [t for t in (chosen, *tied) if len(records(t)) < most]
    if not eligible:
        return None
    pick = min(eligible, key=lambda t: (len(records(t)), t.number != chosen.number, t.number))
    have = len(records(pick))
    return TopUp(pick, min(max(have, 1), budget, most - have))
