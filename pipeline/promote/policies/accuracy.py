"""``accuracy`` (the default): the most accurate front point; among the points not worse than it by more than the
margin, the fastest."""

from __future__ import annotations

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


class Accuracy(BasePolicy):
    name = "accuracy"
    sentence = ("the most accurate front point; among the points whose accuracy is within --margin of it (paired "
                "on the requests both answered), the fastest")
    needs = ("accuracy", "latency")

    def choose(self, study: StudySnapshot, objectives: tuple[Objective, ...], options: Options, *,
               alpha: float = ERROR_RATE) -> Choice:
        quality = role_objective(objectives, "accuracy", self.name)
        speed = role_objective(objectives, "latency", self.name)
        pool = candidates(study)
        best = max(pool, key=lambda t: (t.metrics[quality.metric], -t.metrics[speed.metric], -t.number))
        # each point's accuracy below the best's: within the margin on the requests both answered
        behind = {t.number: difference(study, best, t, quality, alpha=alpha) for t in pool}
        within = [t for t in pool if behind[t.number].estimate <= options.margin]
        chosen = min(within, key=lambda t: (t.metrics[speed.metric], -t.metrics[quality.metric], t.number))
        head = (f"trial {best.number} is the most accurate front point ({quality.metric} "
                f"{best.metrics[quality.metric]:.3g}, {speed.metric} {best.metrics[speed.metric]:.0f})")
        if chosen.number == best.number:
            return Choice(best, f"{head}; no faster point is within --margin {options.margin:g} of its accuracy")
        gap = behind[chosen.number]
        return Choice(chosen, f"{head}; trial {chosen.number} is the fastest of the {len(within)} points within "
                              f"--margin {options.margin:g} of it ({speed.metric} "
                              f"{chosen.metrics[speed.metric]:.0f}; {quality.metric} behind it by {gap.text()}, "
                              f"{gap.how})")

    def decides_on(self, objectives: tuple[Objective, ...]) -> tuple[Objective, ...]:
        """Accuracy alone: a rival faster but tied on accuracy could still be the most accurate point, so the
        finals go on until accuracy tells the two apart (decided on any objective, they stopped at a latency
        difference: BENCHMARKS.md, 10)."""
        return (role_objective(objectives, "accuracy", self.name),)


POLICY = Accuracy()
