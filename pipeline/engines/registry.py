"""Inference backends: one small protocol, implemented in process (llama.cpp), by an Ollama server, by any
OpenAI-compatible server, and by a llama-server process the tool runs itself."""

from __future__ import annotations

from collections.abc import Callable

from pipeline.engines.base import Backend, Generation, RequestFailed
from pipeline.engines.embedded import EmbeddedBackend, bundled_model_path
from pipeline.engines.llama_server import LlamaServerBackend
from pipeline.engines.ollama import OllamaBackend, redact_host
from pipeline.engines.openai import OpenAIBackend
from pipeline.engines.config import EngineConfig
from pipeline.errors import ConfigError, InputError

BACKENDS = ("embedded", "ollama", "auto", "openai", "llama-server")

__all__ = ["BACKENDS", "Backend", "EmbeddedBackend", "Generation", "LlamaServerBackend", "OllamaBackend", "OpenAIBackend",
           "RequestFailed", "bundled_model_path", "make_backend", "redact_host"]


def make_backend(engine: EngineConfig, *,
                 on_pull: Callable[[str, int | None, int | None], None] | None = None) -> tuple[Backend, str]:
    """Create the configured backend, checking it can serve before anything runs.

    ``auto`` takes Ollama when its server answers and has ``engine.ollama_model``, else the embedded engine.
    ``openai`` speaks to the server at ``engine.host``; ``llama-server`` starts one (and stops it on ``close``).

    Returns:
        The backend, and a sentence saying which one was chosen and why.

    Raises:
        InputError: the chosen backend cannot serve (no server, no model, unreadable model file).
    """
    if engine.backend == "openai":
        if not engine.host:
            raise ConfigError("the openai backend needs the server's URL: pass --host (e.g. "
                              "http://127.0.0.1:8000/v1) or set engine.host")
        backend = OpenAIBackend(engine.host, engine.served_model, timeout_s=engine.request_timeout_s)
        return backend, f"openai: {backend.model} on {backend.where}, timings: {backend.describe()['timings']}"
    if engine.backend == "llama-server":
        backend = LlamaServerBackend(engine.gguf, binary=engine.server_binary, extra_args=engine.server_args,
                                     timeout_s=engine.request_timeout_s)
        return backend, f"llama-server: {backend.model_path.name}, started by the tool ({backend.binary})"
    if engine.backend in ("ollama", "auto") and engine.ollama_model:
        try:
            backend = OllamaBackend(engine.ollama_model, host=engine.host, timeout_s=engine.request_timeout_s,
                                    keep_alive=engine.keep_alive, reload_threshold_ms=engine.reload_threshold_ms,
                                    pull=engine.pull, on_pull=on_pull)
            return backend, f"ollama: {engine.ollama_model} on {redact_host(backend.host)}"
        except InputError as exc:
            if engine.backend == "ollama":
                raise
            reason = str(exc)
    elif engine.backend == "ollama":
        raise ConfigError("the ollama backend needs a model name: pass --model NAME or set engine.ollama_model")
    else:
        reason = "no Ollama model named (engine.ollama_model)"
    backend = EmbeddedBackend(engine.gguf, threads=engine.threads)
    if engine.backend == "auto":
        return backend, f"embedded, {backend.model_path.name} (auto: {reason})"
    return backend, f"embedded: {backend.model_path.name}"
