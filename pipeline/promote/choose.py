"""Choosing the point of a study's front to promote, from a snapshot of the study (no optuna here): the policy
named in promote's options (:mod:`pipeline.promote.policies`), and the menu of what each policy would promote.
"""

from __future__ import annotations

from dataclasses import dataclass

from pipeline.errors import PipelineError
from pipeline.measure.registry import Objective, with_role
from pipeline.promote.policies import REGISTRY, Choice, Difference, Options, Preference, difference, policy_named
from pipeline.promote.policies.base import ERROR_RATE, beating_baseline, knee_index
from pipeline.search.drift import machine_note
from pipeline.search.snapshot import StudySnapshot
from pipeline.search.trials import TrialView

__all__ = ["Choice", "ChoosingPolicy", "MenuRow", "Preference", "beating_baseline", "choose_trial", "knee_index",
           "machine_states_note", "menu"]

ChoosingPolicy = Options  # what choose_trial reads of promote's options


def choose_trial(study: StudySnapshot, objectives: tuple[Objective, ...], policy: Options, *,
                 alpha: float = ERROR_RATE) -> Choice:
    """Pick the trial to promote with the policy ``policy.policy`` names (:mod:`pipeline.promote.policies`).

    Returns:
        The trial and why it was chosen among others ("" when nothing narrowed the choice).
    Raises:
        ConfigError: an unknown policy, or one the study's objectives or options do not give what it needs.
        InputError: no trial fits the policy.
    """
    return policy_named(policy.policy).choose(study, objectives, policy, alpha=alpha)


@dataclass(frozen=True)
class MenuRow:
    """What one policy would promote from the study: its trial and dev figures, its accuracy and latency
    against the chosen point's (``None`` for the chosen point itself), or why it promotes nothing."""

    policy: str
    trial: TrialView | None = None
    accuracy: Difference | None = None
    latency: Difference | None = None
    unavailable: str = ""

    def describe(self, metric: str) -> str:
        """One line (a tag on the promotion run): the trial, its dev ``metric`` and p95, its differences."""
        if self.trial is None:
            return f"nothing: {self.unavailable}"
        figures = ", ".join(f"{k} {self.trial.metrics[k]:.4g}" for k in (metric, "latency_p95_ms")
                            if k in self.trial.metrics)
        against = "; ".join(f"{name} {d.text()} ({d.how})" for name, d in (("accuracy", self.accuracy),
                                                                            ("latency", self.latency)) if d)
        return f"trial {self.trial.number}: {figures}" + (f"; against the promoted point: {against}" if against else "")


def menu(study: StudySnapshot, objectives: tuple[Objective, ...], options: Options, chosen: TrialView, *,
         alpha: float = ERROR_RATE) -> list[MenuRow]:
    """For every policy but ``trial`` (and ``sla`` without a limit), what it would promote from ``study``, with
    its paired accuracy and latency differences to ``chosen`` (the point promoted), so that a user sees what
    each choice costs and gains and can re-run with ``--policy``."""
    quality, speed = with_role(objectives, "accuracy"), with_role(objectives, "latency")
    rows = []
    for name in REGISTRY:
        if name == "trial" or (name == "sla" and options.sla_p95_ms is None):
            continue
        asked = _Asked(name, options)
        try:
            pick = choose_trial(study, objectives, asked, alpha=alpha).trial
        except PipelineError as exc:
            rows.append(MenuRow(name, unavailable=str(exc).split(";")[0]))
            continue
        same = pick.number == chosen.number
        rows.append(MenuRow(name, pick,
                            None if same or quality is None else difference(study, pick, chosen, quality, alpha=alpha),
                            None if same or speed is None else difference(study, pick, chosen, speed, alpha=alpha)))
    return rows


@dataclass(frozen=True)
class _Asked:
    """promote's options with another policy named."""

    policy: str
    options: Options

    def __getattr__(self, name: str):
        return getattr(self.options, name)


def machine_states_note(study: StudySnapshot, chosen: TrialView, *, threshold: float) -> str | None:
    """Whether the chosen trial's dev latencies and the baseline trial's come from different machine states
    (:mod:`pipeline.search.drift`: their references differ by more than ``threshold``, relative).

    Returns:
        A sentence saying so (the held-out side-by-side measures both at once), or None: no baseline, the
        baseline chosen, or the same machine state.
    """
    served = study.baseline
    if served is None or served.number == chosen.number:
        return None
    note = machine_note((f"trial {chosen.number}", chosen.reference),
                        (f"the baseline (trial {served.number})", served.reference), threshold)
    return None if note is None else f"on dev, {note}; the held-out side-by-side measures both at once"
