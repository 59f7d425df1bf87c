"""The exact response cache: an answer served again to a request that is the same in everything that made it.

The key (:func:`request_key`) is a digest of the rendered messages (system prompt, few-shot examples, the user
message), the request's JSON schema, every sampling and format setting (the cache's own left out) and the model
(its name and file digest): an answer made under other settings, another prompt or another model is never
returned. A hit's own cost, the key's hashing and the lookup, is timed (:attr:`Lookup.ms`), never taken as zero;
a miss pays it before the engine answers.

What is kept: an answer that follows the request's schema (an answer that does not is the engine's to make
again), unless the value at the job's label path is one of the labels the manifest says are never cached
(``cache.never``: answers that must be made afresh each time). A wrong answer, once kept, is served to every later
hit: a trial fills its cache from its own answers in arrival order, so its accuracy counts that.

Thread-safe; unbounded (a trial's traffic is finite; capacity and time-to-live are a serving choice the
measurements here do not exercise).
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from jsonschema.validators import validator_for

from pipeline.job.pointers import MISSING, Path, parse_pointer, resolve
from pipeline.job.scoring import parse_answer

__all__ = ["CACHE_EMBEDDERS", "CACHE_MODES", "CACHE_SETTINGS", "ExactCache", "Lookup", "answer_label", "request_key"]

# The modes a setting may have: `off` (every request reaches the engine), `exact`, or `semantic`
# (pipeline.cache.semantic).
CACHE_MODES = ("off", "exact", "semantic")
# What a semantic cache embeds requests with: `minilm` (all-MiniLM-L6-v2 in process, pipeline.cache.embedder) or
# `server` (an embedding model of a server, pipeline.cache.served).
CACHE_EMBEDDERS = ("minilm", "server")
# The cache's own settings: never part of a key (the same answer whatever the cache).
CACHE_SETTINGS = ("cache", "cache_threshold", "cache_guard", "cache_embedder")


@dataclass(frozen=True)
class Lookup:
    """What a lookup found: the kept answer (None: a miss), the request's key, and how long hashing and looking
    up took (a hit's whole latency; a miss' addition to the engine's). A semantic cache adds how it found it
    (``kind``), the cosine similarity, the user message the answer was made for (``source``), and what
    :meth:`ExactCache.store` needs to keep the engine's answer (the context's key, the message and its vector)."""

    answer: str | None
    key: str
    ms: float
    kind: str = "exact"
    similarity: float = 1.0
    source: str = ""
    context: str = ""
    message: str = ""
    vector: Any = field(default=None, repr=False)


def request_key(messages: Sequence[Mapping[str, Any]], schema: Any, settings: Mapping[str, Any], model: str) -> str:
    """The digest of everything that makes an answer: the messages, the schema, the settings (the cache's own
    left out) and the model (its name and file digest, as one string)."""
    kept = {k: v for k, v in settings.items() if k not in CACHE_SETTINGS}
    text = json.dumps([[dict(m) for m in messages], schema, kept, model], sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def answer_label(text: str, label: Path | str | None) -> str | None:
    """The label an answer gives: its value at the job's label path, as text (strings as they are, other values as
    JSON); None without a label path or a value there."""
    if label is None:
        return None
    try:
        value = resolve(parse_answer(text), parse_pointer(label) if isinstance(label, str) else label)
    except ValueError:
        return None
    return None if value is MISSING else value if isinstance(value, str) else json.dumps(value)


class ExactCache:
    """The exact cache (see the module docstring). ``never``: labels whose answers are never kept, read at
    ``label`` (a JSON Pointer into the answer)."""

    def __init__(self, *, never: Collection[str] = (), label: Path | str | None = None) -> None:
        if never and label is None:
            raise ValueError("labels that are never cached need the label path to read them")
        self.never, self.label = frozenset(never), label
        self._answers: dict[str, str] = {}
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._answers)

    def lookup(self, messages: Sequence[Mapping[str, Any]], schema: Any, settings: Mapping[str, Any],
               model: str) -> Lookup:
        """The kept answer for this request, if any; timed from before the key is made to after the lookup."""
        start = time.perf_counter()
        key = request_key(messages, schema, settings, model)
        with self._lock:
            answer = self._answers.get(key)
        return Lookup(answer, key, (time.perf_counter() - start) * 1000, source=str(messages[-1]["content"]))

    def keeps(self, answer: str) -> bool:
        """Whether an answer of this label may be kept (its label is not one never cached)."""
        return not self.never or answer_label(answer, self.label) not in self.never

    def store(self, found: Lookup | str, answer: str) -> bool:
        """Keep an answer the engine gave for the request a missed lookup was for (``found``; or its key),
        unless its label is never cached; the caller has checked it follows the schema (:meth:`serve` does).

        Returns:
            Whether it was kept.
        """
        if not self.keeps(answer):
            return False
        with self._lock:
            self._answers[found if isinstance(found, str) else found.key] = answer
        return True

    def serve(self, messages: Sequence[Mapping[str, Any]], schema: Any, settings: Mapping[str, Any], model: str,
              generate: Callable[[], str]) -> tuple[str, Lookup]:
        """A client's request through the cache: the kept answer, else ``generate()``'s, kept when it parses and
        follows ``schema`` (None: any JSON). ``settings`` are the sampling and format options sent with it and
        ``model`` names what answers (with its digest where known): both are part of the key.

        Returns:
            The answer, and the lookup (``answer`` None: the engine answered).
        """
        found = self.lookup(messages, schema, settings, model)
        if found.answer is not None:
            return found.answer, found
        text = generate()
        if _follows(text, schema):
            self.store(found, text)
        return text, found


def _follows(text: str, schema: Any) -> bool:
    try:
        answer = parse_answer(text)
    except ValueError:
        return False
    return schema is None or bool(validator_for(schema)(schema).is_valid(answer))
