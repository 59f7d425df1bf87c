"""The settings of one request: a point of the search space, as the engines read it.

:class:`InferenceSettings` holds the core settings every point gives (Ollama's option names, verbatim, and the
prompt-side knobs) and the optional ones it has (``serving``); :func:`settings_of` builds it from a point
written out in full.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

from pipeline.engines.serving import CONCURRENCY, SERVER_SETTINGS, load_key

__all__ = ["CORE_PARAMETERS", "InferenceSettings", "settings_of"]


@dataclass(frozen=True)
class InferenceSettings:
    """One point of the search space. Option names are Ollama's, verbatim; ``serving`` holds the optional
    settings the space has (``think``, the response ``cache``, llama-server's own settings, the load
    ``concurrency``; pipeline.engines.serving)
    as ``(name, value)`` pairs, in the space's order."""

    num_ctx: int
    num_predict: int
    temperature: float
    top_p: float
    top_k: int
    few_shot: int
    prompt_variant: str
    example_selection: str
    format: str
    seed: int = 0
    serving: tuple[tuple[str, Any], ...] = ()

    @property
    def server(self) -> dict[str, Any]:
        """The server's own settings (empty: the server's defaults)."""
        return {name: value for name, value in self.serving if name in SERVER_SETTINGS}

    @property
    def concurrency(self) -> int:
        """How many clients send requests at once (1: one request at a time)."""
        return dict(self.serving).get(CONCURRENCY, 1)

    @property
    def think(self) -> str:
        """Whether the model thinks before it answers (``default``: as the model does by default)."""
        return dict(self.serving).get("think", "default")

    @property
    def cache(self) -> str:
        """The response cache a request is served through: ``off`` (none), ``exact`` or ``semantic``
        (pipeline.cache)."""
        return dict(self.serving).get("cache", "off")

    @property
    def cache_threshold(self) -> float | None:
        """A semantic cache's least cosine for a hit (None: the cache's default)."""
        return dict(self.serving).get("cache_threshold")

    @property
    def cache_guard(self) -> bool:
        """Whether a semantic cache's guard checks the literal parts of a hit (``cache_guard``, default on)."""
        return dict(self.serving).get("cache_guard", "on") == "on"

    @property
    def cache_embedder(self) -> str:
        """What a semantic cache embeds requests with: ``minilm`` (in process, the default) or ``server``."""
        return dict(self.serving).get("cache_embedder", "minilm")

    @property
    def load_key(self) -> tuple[Any, ...]:
        """What a server must be (re)started or reloaded for (:func:`pipeline.engines.serving.load_key`)."""
        return load_key(self.num_ctx, self.server)

    def options(self) -> dict[str, Any]:
        """The Ollama ``options`` of a request made with these settings."""
        return {"num_ctx": self.num_ctx, "num_predict": self.num_predict, "temperature": self.temperature,
                "top_p": self.top_p, "top_k": self.top_k, "seed": self.seed}

    def as_params(self) -> dict[str, Any]:
        params = asdict(self)
        return {**{k: v for k, v in params.items() if k != "serving"}, **dict(self.serving)}


# Every point of the space gives these; every other setting is optional (left out: the server's default).
CORE_PARAMETERS = tuple(f.name for f in fields(InferenceSettings) if f.name not in ("seed", "serving"))


def settings_of(values: dict[str, Any], *, seed: int) -> InferenceSettings:
    """The settings a point of the space written out in full stands for (a baseline, a settings file)."""
    serving = tuple((name, value) for name, value in values.items() if name not in CORE_PARAMETERS)
    return InferenceSettings(**{name: values[name] for name in CORE_PARAMETERS}, seed=seed, serving=serving)
