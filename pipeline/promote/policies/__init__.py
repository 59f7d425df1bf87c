"""Promotion policies, one module each, in one registry: what each promotes, in a sentence a user can check.

Adding a policy is a module here with a ``POLICY`` (``name``, ``sentence``, the metric roles it ``needs``,
``choose(study, objectives, options)``) and its line in :data:`REGISTRY`.
"""

from __future__ import annotations

import difflib

from pipeline.errors import ConfigError
from pipeline.promote.policies import accuracy, knee, latency, sla, trial
from pipeline.promote.policies.base import Choice, Difference, Options, Policy, Preference, difference

__all__ = ["DEFAULT", "REGISTRY", "Choice", "Difference", "Options", "Policy", "Preference", "difference",
           "policy_named"]

REGISTRY: dict[str, Policy] = {p.name: p for p in (accuracy.POLICY, latency.POLICY, sla.POLICY, knee.POLICY,
                                                   trial.POLICY)}
DEFAULT = "accuracy"


def policy_named(name: str) -> Policy:
    """The policy of that name.

    Raises:
        ConfigError: no such policy (one line, with the closest name and every name).
    """
    if name in REGISTRY:
        return REGISTRY[name]
    close = difflib.get_close_matches(name, REGISTRY, n=1)
    hint = f"did you mean {close[0]!r}? " if close else ""
    raise ConfigError(f"unknown promotion policy {name!r}: {hint}the policies are {', '.join(REGISTRY)}")
