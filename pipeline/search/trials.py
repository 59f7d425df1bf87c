"""What a study keeps on each trial besides Optuna's own record: the names of its user attributes."""

from __future__ import annotations

__all__ = ["BASELINE", "RACED", "REMEASURES", "REUSED", "TOPS_UP"]

# User attr of a trial that was not measured: its settings had been, by the trial it names (see reuse.py).
REUSED = "same_as"
# User attr (and MLflow tag) of the trial that measured the config's baseline: the settings served today.
BASELINE = "baseline"
# User attr (and MLflow tag) of a trial that racing stopped: why (pipeline.racing).
RACED = "raced"
# User attr (and MLflow tag) of a trial that topped up an earlier one: the earlier trial's number. Its records
# are the earlier trial's and more; the earlier trial is superseded (kept in the storage, left out of everything).
TOPS_UP = "tops_up"
# User attr of a trial that measured a setting again from scratch (its first measurement ran while the machine's
# speed moved: pipeline.drift): the earlier trial's number, which it supersedes.
REMEASURES = "remeasures"
