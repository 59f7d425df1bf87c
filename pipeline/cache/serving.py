"""The cache a promoted bundle serves with: read from its sidecar (``promotion.json``'s ``cache``)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pipeline.cache.embedder import TextEmbedder, load_embedder
from pipeline.cache.exact import CACHE_MODES, ExactCache
from pipeline.cache.semantic import DEFAULT_THRESHOLD, SemanticCache
from pipeline.cache.served import ServerEmbedder

__all__ = ["from_sidecar"]


def from_sidecar(sidecar: Mapping[str, Any], *, embed_url: str | None = None) -> ExactCache | None:
    """The cache a promoted setting was measured through (a semantic one loads the embedder, or embeds with the
    server's model it names: at ``embed_url``, default the sidecar's), or None when it serves without one.

    Raises:
        ValueError: the sidecar names a mode this package does not know.
    """
    found = sidecar.get("cache") or {}
    mode = found.get("mode", "off")
    if mode not in CACHE_MODES:
        raise ValueError(f"promotion.json: cache mode {mode!r} is not one of {', '.join(CACHE_MODES)}")
    if mode == "off":
        return None
    never = found.get("never", ())
    label = found.get("label") if never else None
    if mode == "exact":
        return ExactCache(never=never, label=label)
    embedder: TextEmbedder = (ServerEmbedder(embed_url or found["embed_url"], found["embed_model"], found["embed_api"])
                              if "embed_model" in found else load_embedder()[0])
    return SemanticCache(embedder, threshold=found.get("threshold", DEFAULT_THRESHOLD),
                         guard=found.get("guard", "on") == "on", never=never, label=label)
