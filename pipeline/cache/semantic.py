"""The semantic response cache: an answer served again to a request that means nearly the same, under the same
prompt, schema, settings and model.

A lookup tries the exact cache first (:mod:`pipeline.cache.exact`: no embedding needed). On a miss it embeds the
user message (:mod:`pipeline.cache.embedder`, or a server's model: :mod:`pipeline.cache.served`) and takes the kept
request, under the same context (every message before the user's, the schema, the settings, the model:
:func:`context_key`), whose embedding is nearest by cosine; that request's answer is served when the cosine is at
least ``threshold`` and, with the guard on, the literal parts the answer depends on agree
(:mod:`pipeline.cache.guard`). The lookup's time includes the embedding: a hit's latency, and what a miss adds
before the engine answers.

Entries fill as the exact cache's do (answers that follow the schema, labels never cached left out), each with its
embedding, so that the first arrival of a meaning is a miss and a kept wrong answer is served to its paraphrases.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Collection, Mapping, Sequence
from dataclasses import replace
from typing import Any

import numpy as np

from pipeline.cache.embedder import TextEmbedder
from pipeline.cache.exact import ExactCache, Lookup, request_key
from pipeline.cache.guard import agrees
from pipeline.job.pointers import Path
from pipeline.job.scoring import parse_answer

__all__ = ["DEFAULT_THRESHOLD", "SemanticCache", "context_key"]

# The source's range is 0.92-0.95; measured here (BENCHMARKS.md, 12), the guard is what keeps false hits out, and a
# study searches the threshold under a false-hit limit.
DEFAULT_THRESHOLD = 0.9


def context_key(messages: Sequence[Mapping[str, Any]], schema: Any, settings: Mapping[str, Any], model: str) -> str:
    """The key of everything but the user message: the context under which two requests may share an answer."""
    return request_key(messages[:-1], schema, settings, model)


class SemanticCache(ExactCache):
    """The semantic cache (see the module docstring); safe to share between threads."""

    def __init__(self, embedder: TextEmbedder, *, threshold: float = DEFAULT_THRESHOLD, guard: bool = True,
                 never: Collection[str] = (), label: Path | str | None = None) -> None:
        super().__init__(never=never, label=label)
        if not 0 < threshold <= 1:
            raise ValueError(f"a semantic cache's threshold is a cosine in (0, 1], got {threshold!r}")
        self.embedder, self.threshold, self.guard = embedder, threshold, guard
        self._kept: dict[str, list[tuple[np.ndarray, str, str]]] = {}  # context -> (vector, message, answer)
        self._meaning_lock = threading.Lock()

    @property
    def settings(self) -> dict[str, Any]:
        """How this cache is set up, as a bundle's sidecar names it."""
        return {"mode": "semantic", "threshold": self.threshold, "guard": "on" if self.guard else "off",
                "embedder": self.embedder.name}

    def lookup(self, messages: Sequence[Mapping[str, Any]], schema: Any, settings: Mapping[str, Any],
               model: str) -> Lookup:
        """The kept answer for this request: the exact one, else the nearest by meaning that passes the threshold
        and the guard; timed from the first hash to the decision."""
        start = time.perf_counter()
        exact = super().lookup(messages, schema, settings, model)
        if exact.answer is not None:  # a hit is never stored again: no context key, no embedding
            return replace(exact, ms=_since(start))
        message = str(messages[-1]["content"])
        context = context_key(messages, schema, settings, model)
        vector = self.embedder.embed(message)
        with self._meaning_lock:
            kept = list(self._kept.get(context, ()))
        similarity, source, answer = -1.0, "", None
        if kept:
            similarities = np.stack([v for v, _, _ in kept]) @ vector
            best = int(np.argmax(similarities))
            similarity, (_, source, answer) = float(similarities[best]), kept[best]
        served = (answer if answer is not None and similarity >= self.threshold
                  and (not self.guard or agrees(message, source, parse_answer(answer), schema) is None) else None)
        return Lookup(served, exact.key, _since(start), kind="semantic", similarity=max(similarity, 0.0),
                      source=source if served is not None else message, context=context, message=message,
                      vector=vector)

    def store(self, found: Lookup | str, answer: str) -> bool:
        """Keep the engine's answer for a missed lookup: by its key, and by its message's meaning."""
        if not super().store(found, answer):
            return False
        if isinstance(found, Lookup) and found.vector is not None:
            with self._meaning_lock:
                self._kept.setdefault(found.context, []).append((found.vector, found.message, answer))
        return True


def _since(start: float) -> float:
    return (time.perf_counter() - start) * 1000
