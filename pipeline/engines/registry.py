"""The backend registry: each backend's name, the config key that names its model, and how to make it.

Adding a backend is one module (a class that subclasses :class:`pipeline.engines.base.Backend`) and one entry
in :data:`REGISTRY`; the config, the command line's ``--backend`` and ``--model`` read it from here.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from pipeline.engines.base import Backend
from pipeline.engines.config import EngineConfig
from pipeline.engines.embedded import EmbeddedBackend
from pipeline.engines.llama_server import LlamaServerBackend
from pipeline.engines.ollama import OllamaBackend, redact_host
from pipeline.engines.openai import OpenAIBackend
from pipeline.errors import ConfigError, InputError, did_you_mean

__all__ = ["BACKENDS", "REGISTRY", "BackendEntry", "make_backend", "model_key"]

OnPull = Callable[[str, int | None, int | None], None]


@dataclass(frozen=True)
class BackendEntry:
    """One backend: ``make`` builds it from the engine config (and reports Ollama pulls to ``on_pull``) and
    returns it with a sentence saying which backend serves and why; ``model_key`` is the engine config field
    that ``--model`` sets for it."""

    make: Callable[[EngineConfig, OnPull | None], tuple[Backend, str]]
    model_key: str


def _openai(engine: EngineConfig, on_pull: OnPull | None) -> tuple[Backend, str]:
    if not engine.host:
        raise ConfigError("the openai backend needs the server's URL: pass --host (e.g. "
                          "http://127.0.0.1:8000/v1) or set engine.host")
    backend = OpenAIBackend(engine.host, engine.served_model, timeout_s=engine.request_timeout_s)
    return backend, f"openai: {backend.model} on {backend.where}, timings: {backend.describe()['timings']}"


def _llama_server(engine: EngineConfig, on_pull: OnPull | None) -> tuple[Backend, str]:
    backend = LlamaServerBackend(engine.gguf, binary=engine.server_binary, extra_args=engine.server_args,
                                 timeout_s=engine.request_timeout_s)
    return backend, f"llama-server: {backend.model_path.name}, started by the tool ({backend.binary})"


def _ollama_backend(engine: EngineConfig, on_pull: OnPull | None) -> OllamaBackend:
    return OllamaBackend(engine.ollama_model, host=engine.host, timeout_s=engine.request_timeout_s,
                         keep_alive=engine.keep_alive, reload_threshold_ms=engine.reload_threshold_ms,
                         pull=engine.pull, on_pull=on_pull)


def _ollama(engine: EngineConfig, on_pull: OnPull | None) -> tuple[Backend, str]:
    if not engine.ollama_model:
        raise ConfigError("the ollama backend needs a model name: pass --model NAME or set engine.ollama_model")
    backend = _ollama_backend(engine, on_pull)
    return backend, f"ollama: {engine.ollama_model} on {redact_host(backend.host)}"


def _embedded(engine: EngineConfig, on_pull: OnPull | None) -> tuple[Backend, str]:
    backend = EmbeddedBackend(engine.gguf, threads=engine.threads)
    return backend, f"embedded: {backend.model_path.name}"


def _auto(engine: EngineConfig, on_pull: OnPull | None) -> tuple[Backend, str]:
    """Ollama when its server answers and has ``engine.ollama_model``, else the embedded engine."""
    if engine.ollama_model:
        try:
            backend = _ollama_backend(engine, on_pull)
            return backend, f"ollama: {engine.ollama_model} on {redact_host(backend.host)}"
        except InputError as exc:
            reason = str(exc)
    else:
        reason = "no Ollama model named (engine.ollama_model)"
    backend = EmbeddedBackend(engine.gguf, threads=engine.threads)
    return backend, f"embedded, {backend.model_path.name} (auto: {reason})"


REGISTRY: dict[str, BackendEntry] = {
    "embedded": BackendEntry(_embedded, "gguf"),
    "ollama": BackendEntry(_ollama, "ollama_model"),
    "auto": BackendEntry(_auto, "ollama_model"),
    "openai": BackendEntry(_openai, "served_model"),
    "llama-server": BackendEntry(_llama_server, "gguf"),
}
BACKENDS = tuple(REGISTRY)


def _entry(name: str) -> BackendEntry:
    try:
        return REGISTRY[name]
    except KeyError:
        raise ConfigError(f"unknown backend {name!r}.{did_you_mean(name, REGISTRY)} Known backends: "
                          f"{', '.join(REGISTRY)}") from None


def model_key(backend: str) -> str:
    """The engine config field that names the model of ``backend`` (what ``--model`` sets)."""
    return _entry(backend).model_key


def make_backend(engine: EngineConfig, *, on_pull: OnPull | None = None) -> tuple[Backend, str]:
    """Create the configured backend, checking it can serve before anything runs.

    ``auto`` takes Ollama when its server answers and has ``engine.ollama_model``, else the embedded engine.
    ``openai`` speaks to the server at ``engine.host``; ``llama-server`` starts one (and stops it on ``close``).

    Returns:
        The backend, and a sentence saying which one was chosen and why.

    Raises:
        ConfigError: an unknown backend name, or one that lacks its host or model.
        InputError: the chosen backend cannot serve (no server, no model, unreadable model file).
    """
    return _entry(engine.backend).make(engine, on_pull)
