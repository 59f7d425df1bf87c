"""Scoring rules: how the value at one answer path is compared with the expected one.

An experiment's manifest names a rule per path (a JSON Pointer, ``*`` for any array item) and a default for the
rest. A rule given at a path applies below it too, unless a deeper path has its own. The rules, by name:

- ``exact``: the same JSON value (``1`` and ``1.0`` are equal, ``true`` and ``1`` are not);
- ``text``: strings equal after case folding and collapsing white space; other values as ``exact``;
- ``number``: numbers within ``tolerance`` (absolute, default 0) or ``relative`` (a share of the expected
  value); other values as ``exact``;
- ``unordered``: an array whose order does not matter: items are paired by ``key`` (a member of each item)
  when given, else as a multiset (the pairing that gets most fields right); the paired items' fields are then
  compared by their own rules;
- ``ignore``: not scored at all (free text, ids the model cannot know).

Any rule takes a ``weight`` (default 1): how much each field under the path counts in ``field_accuracy``.
New rules are one class and one line in :data:`RULES`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

from pipeline.errors import DataError, did_you_mean
from pipeline.job.files import shown
from pipeline.job.pointers import Path, format_pointer, matches

__all__ = ["RULES", "Rule", "RuleSet", "make_rule"]


@dataclass(frozen=True)
class Rule:
    """A comparison of one expected value with the answer's; ``weight`` is its share in field accuracy."""

    name: ClassVar[str] = ""
    # The JSON types the rule can judge at its own path: a rule on a path the schema gives none of is refused.
    applies_to: ClassVar[frozenset[str] | None] = None
    options: ClassVar[tuple[str, ...]] = ()
    weight: float | None = None

    def same(self, expected: Any, got: Any) -> bool:
        return _same_json(expected, got)


@dataclass(frozen=True)
class Exact(Rule):
    name: ClassVar[str] = "exact"


@dataclass(frozen=True)
class Text(Rule):
    name: ClassVar[str] = "text"
    applies_to: ClassVar[frozenset[str] | None] = frozenset({"string", "object", "array"})

    def same(self, expected: Any, got: Any) -> bool:
        if isinstance(expected, str) and isinstance(got, str):
            return _folded(expected) == _folded(got)
        return _same_json(expected, got)


@dataclass(frozen=True)
class Number(Rule):
    name: ClassVar[str] = "number"
    applies_to: ClassVar[frozenset[str] | None] = frozenset({"number", "integer", "object", "array"})
    options: ClassVar[tuple[str, ...]] = ("tolerance", "relative")
    tolerance: float = 0.0
    relative: float = 0.0

    def same(self, expected: Any, got: Any) -> bool:
        if _is_number(expected) and _is_number(got):
            allowed = max(self.tolerance, self.relative * abs(expected))
            return abs(expected - got) <= allowed + 1e-12 * max(abs(expected), 1.0)
        return _same_json(expected, got)


@dataclass(frozen=True)
class Unordered(Rule):
    name: ClassVar[str] = "unordered"
    applies_to: ClassVar[frozenset[str] | None] = frozenset({"array"})
    options: ClassVar[tuple[str, ...]] = ("key",)
    key: str | None = None


@dataclass(frozen=True)
class Ignore(Rule):
    name: ClassVar[str] = "ignore"


RULES: dict[str, type[Rule]] = {rule.name: rule for rule in (Exact, Text, Number, Unordered, Ignore)}


def make_rule(spec: Any, where: str) -> Rule:
    """A rule from its manifest form: a name (``text``), or a mapping (``{rule: number, tolerance: 0.01}``).

    Raises:
        DataError: an unknown rule (with "did you mean"), an option the rule does not take, or a bad value.
    """
    if isinstance(spec, str):
        spec = {"rule": spec}
    if not isinstance(spec, dict) or not isinstance(spec.get("rule"), str):
        raise DataError(f"{where}: a rule is a name ({', '.join(RULES)}) or a mapping with 'rule', got "
                        f"{shown(spec)}")
    name = spec["rule"]
    if name not in RULES:
        raise DataError(f"{where}: unknown rule {name!r}.{did_you_mean(name, RULES)} Rules: {', '.join(RULES)}")
    cls = RULES[name]
    allowed = ("rule", "weight", *cls.options)
    for key in spec:
        if key not in allowed:
            raise DataError(f"{where}: rule {name!r} takes no {key!r}.{did_you_mean(str(key), allowed)} "
                            f"It takes: {', '.join(allowed[1:])}")
    values: dict[str, Any] = {}
    for key in ("weight", "tolerance", "relative"):
        if key in spec:
            value = spec[key]
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
                    or value < 0 or (key == "weight" and value == 0):
                wanted = "a number greater than 0" if key == "weight" else "a number, 0 or more"
                raise DataError(f"{where}: '{key}' must be {wanted}, got {shown(value)}")
            values[key] = float(value)
    if "key" in spec:
        if not isinstance(spec["key"], str) or not spec["key"]:
            raise DataError(f"{where}: 'key' must be the name of a member of each item, got {shown(spec['key'])}")
        values["key"] = spec["key"]
    return cls(**values)


@dataclass(frozen=True)
class RuleSet:
    """The rules of one experiment: a default, and rules by path pattern."""

    default: Rule = field(default_factory=Text)
    by_path: Mapping[Path, Rule] = field(default_factory=dict)

    def _nearest(self, path: Path, wanted: Any = None) -> Rule | None:
        """The rule of the longest pattern that is ``path`` or one of its ancestors (filtered by ``wanted``)."""
        for length in range(len(path), -1, -1):
            head = path[:length]
            for pattern, rule in self.by_path.items():
                if matches(pattern, head) and (wanted is None or wanted(rule)):
                    return rule
        return None

    def leaf_rule(self, path: Path) -> Rule:
        """How a value at ``path`` is compared: the nearest comparing rule at or above it, else the default."""
        return self._nearest(path, lambda r: not isinstance(r, Unordered)) or self.default

    def array_rule(self, path: Path) -> Unordered | None:
        """The ``unordered`` rule given at exactly ``path``, if any."""
        return next((r for p, r in self.by_path.items() if isinstance(r, Unordered) and matches(p, path)), None)

    def weight(self, path: Path) -> float:
        """The weight of the nearest rule at or above ``path`` that sets one (default 1)."""
        rule = self._nearest(path, lambda r: r.weight is not None)
        return rule.weight if rule is not None and rule.weight is not None else 1.0

    def describe(self) -> dict[str, str]:
        """The rules as text, for run params."""
        return {"default": self.default.name, **{format_pointer(p): r.name for p, r in self.by_path.items()}}


def _folded(text: str) -> str:
    return " ".join(text.split()).casefold()


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _same_json(a: Any, b: Any) -> bool:
    """JSON equality: numbers by value, booleans only equal to booleans, containers member by member."""
    if isinstance(a, bool) or isinstance(b, bool):
        return isinstance(a, bool) and isinstance(b, bool) and a == b
    if _is_number(a) and _is_number(b):
        return a == b
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same_json(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_same_json(x, y) for x, y in zip(a, b))
    return type(a) is type(b) and a == b
