"""The guard of the semantic cache: two requests that mean nearly the same share an answer only when the literal
parts that an answer depends on agree.

A sentence embedding places "Review PR #42" and "Review PR #43" (cosine 0.95), "Show high priority tasks" and
"Show low priority tasks" (0.96) closer than two real paraphrases ("List all my tasks" / "show every task":
0.78): no threshold separates them. What separates them is literal: a number, a word the schema names, a value the
answer copies. For a hit, these must agree, each read from the job's files and the texts alone, never from one
job's vocabulary:

- **numbers and identifiers**: every run of digits, and every token with a digit, ``#`` or ``@`` in it (``42``,
  ``#42``, ``Q3``, ``3pm``, ``@dana``): the same set in both requests;
- **quoted text**: what stands between double quotes, or single quotes at word boundaries: the same set;
- **the schema's words**: every ``enum`` and ``const`` string of the request's schema (``$defs`` included), as a
  phrase (``high``, ``delete_task`` read as "delete task"), found in a request as whole words: the same set;
- **what the answer copies**: each string and number of the kept answer that its own request contains as whole
  words (a title, a name, a day) must be in the new request too ("call the dentist on monday" does not lend its
  answer, with ``"due": "monday"``, to "... on tuesday").

The guard only refuses hits; it never makes one. :func:`agrees` says why it refused.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from functools import lru_cache
from typing import Any

__all__ = ["agrees", "schema_words"]

_IDENTIFIER = re.compile(r"[#@]?\w*\d\w*|[#@]\w+")
_QUOTED = re.compile(r"\"([^\"]+)\"|(?<!\w)'([^']+)'(?!\w)")


def _phrase(text: str) -> str:
    return " ".join(re.findall(r"\w+", text.replace("_", " ").lower()))


def _strings(node: Any, keys: tuple[str, ...]) -> Iterator[str]:
    if isinstance(node, dict):
        for key, value in node.items():
            if key in keys:
                values = value if isinstance(value, list) else [value]
                yield from (v for v in values if isinstance(v, str))
            else:
                yield from _strings(value, keys)
    elif isinstance(node, list):
        for item in node:
            yield from _strings(item, keys)


@lru_cache(maxsize=64)
def _schema_words(document: str) -> frozenset[str]:
    return frozenset(p for s in _strings(json.loads(document), ("enum", "const")) if (p := _phrase(s)))


def schema_words(schema: Any) -> frozenset[str]:
    """The phrases of every ``enum`` and ``const`` string of a JSON Schema, lowercased, ``_`` read as a space."""
    return _schema_words(json.dumps(schema, sort_keys=True)) if isinstance(schema, dict) else frozenset()


def _contains(text: str, phrase: str) -> bool:
    return bool(phrase) and re.search(rf"(?<!\w){re.escape(phrase)}(?!\w)", text) is not None


def _literals(text: str, words: frozenset[str]) -> tuple[set[str], set[str], set[str]]:
    lowered = _phrase(text)
    return ({m.lower() for m in _IDENTIFIER.findall(text)},
            {(a or b).strip().lower() for a, b in _QUOTED.findall(text)},
            {w for w in words if _contains(lowered, w)})


def _copied(answer: Any) -> Iterator[str]:
    if isinstance(answer, dict):
        for value in answer.values():
            yield from _copied(value)
    elif isinstance(answer, list):
        for item in answer:
            yield from _copied(item)
    elif isinstance(answer, str) or (isinstance(answer, (int, float)) and not isinstance(answer, bool)):
        yield _phrase(str(answer))


def agrees(request: str, source: str, answer: Any, schema: Any) -> str | None:
    """Whether ``source``'s kept ``answer`` (parsed) may serve ``request`` (see the module docstring).

    Returns:
        None when the literal parts agree, else what differs (``number or identifier '43'``).
    """
    words = schema_words(schema)
    ours, theirs = _literals(request, words), _literals(source, words)
    for kind, a, b in zip(("number or identifier", "quoted text", "word of the schema"), ours, theirs):
        if a != b:
            return f"{kind} {sorted(a ^ b)[0]!r}"
    here, there = _phrase(request), _phrase(source)
    for value in _copied(answer):
        if _contains(there, value) and not _contains(here, value):
            return f"the answer's {value!r}"
    return None
