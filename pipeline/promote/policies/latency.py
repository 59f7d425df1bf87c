"""``latency``: the fastest front point not less accurate than the baseline (the settings served today) by more
than the margin."""

from __future__ import annotations

from pipeline.errors import ConfigError, InputError
from pipeline.measure.registry import Objective
from pipeline.promote.policies.base import (
    ERROR_RATE,
    BasePolicy,
    Choice,
    Options,
    candidates,
    difference,
    role_objective,
)
from pipeline.search.snapshot import StudySnapshot


class Latency(BasePolicy):
    name = "latency"
    sentence = ("the fastest front point whose accuracy is not below the baseline's (the settings served today) by "
                "more than --margin, paired on the requests both answered")
    needs = ("accuracy", "latency")

    def choose(self, study: StudySnapshot, objectives: tuple[Objective, ...], options: Options, *,
               alpha: float = ERROR_RATE) -> Choice:
        quality = role_objective(objectives, "accuracy", self.name)
        speed = role_objective(objectives, "latency", self.name)
        served = study.baseline
        if served is None:
            raise ConfigError("--policy latency needs the study to have measured a baseline (the config's "
                              "`baseline:` section, the settings served today); use --policy accuracy")
        pool = candidates(study)
        ahead = {t.number: difference(study, t, served, quality, alpha=alpha) for t in pool}
        kept = [t for t in pool if ahead[t.number].estimate >= -options.margin]
        if not kept:
            raise InputError(f"no front point is within --margin {options.margin:g} of the baseline's "
                             f"{quality.metric} ({served.metrics[quality.metric]:.3g}, trial {served.number}); "
                             "raise --margin or use --policy accuracy")
        chosen = min(kept, key=lambda t: (t.metrics[speed.metric], -t.metrics[quality.metric], t.number))
        gap = ahead[chosen.number]
        return Choice(chosen, f"trial {chosen.number} is the fastest of the {len(kept)} front points not below the "
                              f"baseline (trial {served.number}) by more than --margin {options.margin:g} in "
                              f"{quality.metric} ({gap.text()} against it, {gap.how})")


POLICY = Latency()
