"""Answers judged: pure functions from one answer and its expected value to a score.

:meth:`Scorer.score` parses an answer (code fences tolerated), validates it against the request's JSON schema
and compares it with the expected answer field by field: both answers are walked together, every leaf (a value
that is not a non-empty object or array) of either one is a field, compared under the rule the experiment gives
its path (:mod:`pipeline.job.rules`). A field only one answer has is wrong. Arrays are compared item by item, or
as unordered collections where a rule says so.

What else an expected answer accepts is :class:`Accepts`, by path: other values (**alternatives**: the answer is
judged against each, the expected value first, and the one with the largest share of its fields right counts),
fields the answer **may leave out** (absent: every field under the path right), and **defaults** (absent: judged
as if the answer held the default). Each field says what it was judged against (``FieldResult.matched``).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from itertools import zip_longest
from typing import Any

import numpy as np
from scipy.optimize import linear_sum_assignment

from pipeline.job.pointers import ANY, MISSING, Path, format_pointer, resolve
from pipeline.job.rules import Ignore, RuleSet
from pipeline.job.schemas import AnswerSchema

__all__ = ["Accepts", "AnswerScore", "FieldResult", "Scorer", "parse_answer"]

_FENCE = re.compile(r"^\s*```[a-zA-Z0-9_-]*\s*\n?(.*?)\n?\s*```\s*$", re.DOTALL)


@dataclass(frozen=True)
class FieldResult:
    """One field of an answer: its path (``*`` for array items), both values (MISSING where absent), verdict."""

    path: str
    expected: Any
    got: Any
    correct: bool
    weight: float = 1.0
    # what else the expected answer accepted here: "alternative 1" (the first of the line's list), "left out",
    # "default"; "" for the expected value itself
    matched: str = ""


@dataclass(frozen=True)
class Accepts:
    """What an expected answer accepts besides itself, by concrete path (no ``*``): other values
    (``alternatives``), absence (``optional``), absence meaning a value (``defaults``)."""

    alternatives: Mapping[Path, tuple[Any, ...]] = field(default_factory=dict)
    optional: frozenset[Path] = frozenset()
    defaults: Mapping[Path, Any] = field(default_factory=dict)

    def __bool__(self) -> bool:
        return bool(self.alternatives or self.optional or self.defaults)

    def without(self, path: Path) -> Accepts:
        """The same, with nothing accepted at ``path`` itself (its alternatives already chosen)."""
        return Accepts({p: v for p, v in self.alternatives.items() if p != path}, self.optional - {path},
                       {p: v for p, v in self.defaults.items() if p != path})


NOTHING_ELSE = Accepts()


@dataclass(frozen=True)
class AnswerScore:
    parsed: bool
    schema_valid: bool
    exact_match: bool
    field_accuracy: float
    label_correct: bool | None = None
    fields: tuple[FieldResult, ...] = ()
    error: str = ""


def parse_answer(text: str) -> Any:
    """Parse a model answer as JSON, tolerating code fences and text around one JSON object.

    Returns:
        The parsed value.

    Raises:
        ValueError: no JSON value could be read from the text.
    """
    stripped = text.strip()
    fenced = _FENCE.match(stripped)
    if fenced:
        stripped = fenced.group(1).strip()
    try:
        return json.loads(stripped)
    except json.JSONDecodeError:
        start = stripped.find("{")  # text around one object; an array answer parses whole, above
        if start < 0:
            raise ValueError("no JSON object in the answer") from None
        try:
            value, _ = json.JSONDecoder().raw_decode(stripped[start:])
        except json.JSONDecodeError as exc:
            raise ValueError(f"invalid JSON: {exc.msg}") from None
        return value


@dataclass(frozen=True)
class Scorer:
    """Scores answers of one experiment: its rules, and its label path (None without a label)."""

    rules: RuleSet = RuleSet()
    label: Path | None = None

    def score(self, text: str, expected: Any, schema: AnswerSchema, accepts: Accepts = NOTHING_ELSE) -> AnswerScore:
        """Score one answer against its schema and the expected answer (and what else it ``accepts``).

        ``field_accuracy`` is the weighted share of fields (leaves of the expected answer and of the answer,
        ignored paths left out) that the rules find equal in both; ``exact_match`` means every field is.
        """
        try:
            answer = parse_answer(text)
        except ValueError as exc:
            return self.unanswered(expected, str(exc), parsed=False)
        fields = self.fields(expected, answer, accepts)
        weight = sum(f.weight for f in fields)
        return AnswerScore(
            parsed=True,
            schema_valid=not schema.violation_message(answer),
            exact_match=all(f.correct for f in fields),
            field_accuracy=sum(f.weight for f in fields if f.correct) / weight if weight else 1.0,
            label_correct=None if self.label is None else self._same_at(self.label, expected, answer),
            fields=tuple(fields),
            error=schema.violation_message(answer),
        )

    def unanswered(self, expected: Any, error: str, *, parsed: bool = False) -> AnswerScore:
        """The score of a request with no usable answer (failed, or not JSON): every field wrong."""
        return AnswerScore(parsed, False, False, 0.0, None if self.label is None else False,
                           tuple(self.fields(expected, MISSING)), error)

    def fields(self, expected: Any, got: Any, accepts: Accepts = NOTHING_ELSE) -> list[FieldResult]:
        """Both answers' fields, paired and judged (see the module docstring)."""
        out: list[FieldResult] = []
        self._align(expected, got, (), (), out, accepts)
        return out

    def _same_at(self, path: Path, expected: Any, got: Any) -> bool:
        want, have = resolve(expected, path), resolve(got, path)
        return want is not MISSING and have is not MISSING and self.rules.leaf_rule(path).same(want, have)

    def _align(self, exp: Any, got: Any, concrete: Path, pattern: Path, out: list[FieldResult],
               accepts: Accepts = NOTHING_ELSE, matched: str = "") -> None:
        rule = self.rules.leaf_rule(concrete)
        if isinstance(rule, Ignore):
            return
        if accepts and exp is not MISSING and self._accepted(exp, got, concrete, pattern, out, accepts):
            return
        exp_kind, got_kind = _container(exp), _container(got)

        def leaf() -> None:
            correct = exp is not MISSING and got is not MISSING and rule.same(exp, got)
            out.append(FieldResult(format_pointer(pattern), exp, got, correct, self.rules.weight(concrete), matched))

        if exp_kind is not None and got_kind is not None and exp_kind is not got_kind:  # an object for an array
            self._align(exp, MISSING, concrete, pattern, out, accepts, matched)
            self._align(MISSING, got, concrete, pattern, out, accepts, matched)
        elif exp_kind is not None and got_kind is None and got is not MISSING:  # a value for an object
            self._align(exp, MISSING, concrete, pattern, out, accepts, matched)
        elif exp_kind is None and (got_kind is None or exp is not MISSING) or _empty(exp) and _empty(got):
            leaf()  # two values (or one), a value where an object came, or empty containers
        elif dict in (exp_kind, got_kind):
            exp_map = exp if isinstance(exp, dict) else {}
            got_map = got if isinstance(got, dict) else {}
            for key in [*exp_map, *(k for k in got_map if k not in exp_map)]:
                self._align(exp_map.get(key, MISSING), got_map.get(key, MISSING), concrete + (key,),
                            pattern + (key,), out, accepts, matched)
        else:
            pairs = self._pairs(exp if isinstance(exp, list) else [], got if isinstance(got, list) else [],
                                concrete)
            for index, (item, answered) in enumerate(pairs):
                self._align(item, answered, concrete + (str(index),), pattern + (ANY,), out, accepts, matched)

    def _accepted(self, exp: Any, got: Any, concrete: Path, pattern: Path, out: list[FieldResult],
                  accepts: Accepts) -> bool:
        """Judge the value at ``concrete`` by what else ``accepts`` allows there, adding its fields to ``out``;
        False when it allows nothing else there (judge it as usual)."""
        rest = accepts.without(concrete)
        if got is MISSING and concrete in accepts.optional:
            # left out where that is right: every field of the expected value, right
            judged: list[FieldResult] = []
            self._align(exp, exp, concrete, pattern, judged)
            out.extend(replace(f, got=MISSING, correct=True, matched="left out") for f in judged)
            return True
        if got is MISSING and concrete in accepts.defaults:
            self._align(exp, accepts.defaults[concrete], concrete, pattern, out, rest, "default")
            return True
        alternatives = accepts.alternatives.get(concrete)
        if not alternatives:
            return False
        best: list[FieldResult] | None = None
        for index, value in enumerate((exp, *alternatives)):
            judged: list[FieldResult] = []
            self._align(value, got, concrete, pattern, judged, rest, f"alternative {index}" if index else "")
            if best is None or _tally(judged) > _tally(best):
                best = judged
        out.extend(best or [])
        return True

    def _pairs(self, exp: list[Any], got: list[Any], path: Path) -> list[tuple[Any, Any]]:
        """Items of two arrays paired for comparison: by position, or as an unordered rule at ``path`` says."""
        rule = self.rules.array_rule(path)
        if rule is None:
            return list(zip_longest(exp, got, fillvalue=MISSING))
        unpaired = list(range(len(got)))
        pairs: list[tuple[Any, Any]] = []
        if rule.key is not None:
            same_key = self.rules.leaf_rule(path + (ANY, rule.key)).same
            for item in exp:
                want = resolve(item, (rule.key,))
                match = next((j for j in unpaired if want is not MISSING and resolve(got[j], (rule.key,))
                              is not MISSING and same_key(want, resolve(got[j], (rule.key,)))), None)
                pairs.append((item, MISSING if match is None else got[match]))
                if match is not None:
                    unpaired.remove(match)
        else:
            # A multiset: the pairing with the most fields right (Hungarian algorithm), extra items unpaired.
            scores = np.array([[self._agreement(item, answered, path + (ANY,)) for answered in got] for item in exp])
            rows, cols = linear_sum_assignment(scores, maximize=True) if scores.size else ([], [])
            chosen = dict(zip(rows, cols))
            for i, item in enumerate(exp):
                pairs.append((item, got[chosen[i]] if i in chosen else MISSING))
            unpaired = [j for j in unpaired if j not in chosen.values()]
        return pairs + [(MISSING, got[j]) for j in unpaired]

    def _agreement(self, exp: Any, got: Any, path: Path) -> float:
        out: list[FieldResult] = []
        self._align(exp, got, path, path, out)
        weight = sum(f.weight for f in out)
        return sum(f.weight for f in out if f.correct) / weight if weight else 1.0


def _tally(fields: list[FieldResult]) -> tuple[float, float]:
    """How well one alternative fits: the share of its fields' weight that is right, then that weight."""
    right, total = sum(f.weight for f in fields if f.correct), sum(f.weight for f in fields)
    return (right / total if total else 1.0), right


def _container(value: Any) -> type | None:
    return dict if isinstance(value, dict) else list if isinstance(value, list) else None


def _empty(value: Any) -> bool:
    """Missing, or an empty object or array."""
    return value is MISSING or (_container(value) is not None and not value)
