"""``trial``: the trial named by ``--trial N``, which must be complete and feasible."""

from __future__ import annotations

from pipeline.errors import ConfigError, InputError
from pipeline.measure.registry import Objective
from pipeline.promote.policies.base import ERROR_RATE, BasePolicy, Choice, Options
from pipeline.search.snapshot import StudySnapshot


class Trial(BasePolicy):
    name = "trial"
    sentence = "the trial named by --trial N, when it completed and met every constraint"
    needs = ()

    def check(self, options: Options) -> None:
        if options.trial is None:
            raise ConfigError("--policy trial needs --trial N")

    def choose(self, study: StudySnapshot, objectives: tuple[Objective, ...], options: Options, *,
               alpha: float = ERROR_RATE) -> Choice:
        self.check(options)
        chosen = study.trial(options.trial)
        if chosen is None or not chosen.complete:
            raise InputError(f"trial {options.trial} of study {study.name!r} is not a completed trial; "
                             f"front trials: {', '.join(str(t.number) for t in study.front) or 'none'}")
        if not chosen.feasible:
            raise InputError(f"trial {options.trial} breaks a constraint ({chosen.constraints}; NaN: its metric "
                             "could not be measured); choose a feasible one")
        return Choice(chosen)


POLICY = Trial()
