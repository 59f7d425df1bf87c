"""The Ollama backend: a model served by an Ollama server, through the official ``ollama`` client.

Requests stream (``/api/chat`` with ``stream=True``) so time to first token is our own measurement; the
server's timing fields (nanoseconds: ``load_duration``, ``prompt_eval_duration``, ``eval_duration``,
``total_duration``) give the prefill/decode breakdown, and our wall clock minus ``total_duration`` is the
network and queue overhead.

Changing ``num_ctx`` makes Ollama reload the model. :meth:`OllamaBackend.start_trial` does that reload
deliberately, with Ollama's documented load request (a chat with no messages), so it is timed apart; a reload
the server does on its own during a request (another client changed the model, it was evicted) shows up as
a large ``load_duration`` and is reported through ``Generation.reload_ms`` so the runner can retry the request.
"Large" is calibrated: a warm request's ``load_duration`` is the server's own lookup and scheduling (1.3–6.7 ms in
the examples of Ollama's docs/api.md, 0.5–6.6 s for a load), so a request counts as a reload when its
``load_duration`` exceeds :data:`RELOAD_FACTOR` times the median of the warm ones seen (the first request after
each load is warm by construction), and at least :data:`RELOAD_FLOOR_MS`; a fixed ``reload_threshold_ms`` replaces
that rule.

Thinking: a model with Ollama's thinking capability thinks unless told not to (``think``); its thinking streams in
``message.thinking`` before the answer. Time to first token is the answer's; the first thinking token, the
thinking's span (first to last thinking token) and its tokens (one streamed piece per token) are measured
apart. With ``format`` the server applies the schema in a second request after the thinking, and its final
counts and durations are that request's alone; without, ``eval_count`` covers thinking and answer.

Failures: a request that times out, gets an HTTP error, an error in the middle of its stream, or a dropped
connection is one failed request (:class:`RequestFailed`); a server that refuses connections is a dead
server (:class:`BackendError`), which fails the trial.
"""

from __future__ import annotations

import os
import statistics
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

import httpx
import ollama

from pipeline.engines._ollama import http_client
from pipeline.engines.base import Backend, Generation, Message, RequestFailed, http_failures
from pipeline.engines.memory import MIB, kv_cache_mib
from pipeline.engines.settings import InferenceSettings
from pipeline.engines.tokens import estimate_tokens
from pipeline.engines.truncation import PromptSizes
from pipeline.errors import BackendError, InputError, redact_url

__all__ = ["OllamaBackend", "redact_host"]

DEFAULT_HOST = "http://127.0.0.1:11434"
_NS_PER_MS = 1_000_000
RELOAD_FACTOR = 5.0
RELOAD_FLOOR_MS = 50.0
_WARM_SAMPLES = 50  # the latest warm load_durations the threshold is drawn from
_THINK = {"default": None, "off": False, "on": True}


def redact_host(host: str) -> str:
    """The host URL without credentials (user info, query values, fragment), fit for messages, logs and run tags.

    Never raises: a host that does not parse is redacted as text.
    """
    return redact_url(host if "://" in host else f"http://{host}")


class OllamaBackend(Backend):
    """A model on an Ollama server."""

    name = "ollama"
    server_timings = True
    keeps_contexts = False  # a request with another num_ctx makes the server reload the model
    server_settings = False
    concurrent = True
    thinks = True  # sends `think`

    def __init__(self, model: str, *, host: str | None, timeout_s: float, keep_alive: str = "30m",
                 reload_threshold_ms: float | None = None, pull: bool = False,
                 on_pull: Callable[[str, int | None, int | None], None] | None = None) -> None:
        """Connect and check the server and the model (the preflight).

        Raises:
            InputError: the server cannot be reached, or does not have the model (and ``pull`` is off).
        """
        self.model = model
        self.host = host or os.environ.get("OLLAMA_HOST") or DEFAULT_HOST
        self.keep_alive = keep_alive
        self.timeout_s = timeout_s
        self.reload_threshold_ms = reload_threshold_ms
        # A short connect timeout, so a host that does not answer is reported in seconds, not minutes.
        try:
            self.client = ollama.Client(host=self.host,
                                        timeout=httpx.Timeout(timeout_s, connect=min(timeout_s, 5.0)))
        except ValueError as exc:
            source = "engine.host" if host else "OLLAMA_HOST" if os.environ.get("OLLAMA_HOST") else "host"
            raise InputError(f"{source} {redact_host(self.host)!r} is not a server URL ({exc}); use e.g. "
                             "http://127.0.0.1:11434") from exc
        self._loaded_ctx: int | None = None
        self._warm_ms: list[float] = []  # load_duration of requests that found the model loaded
        self._after_load = False
        self._lock = threading.Lock()
        self.context_limit: int | None = None  # the model's training context, from `show`
        self.can_think = False  # the model has the thinking capability, from `show`
        self.prompt_sizes = PromptSizes()
        self.version = self._server_version()
        self._details = self._model_details(pull, on_pull)

    def _server_version(self) -> str:
        where = redact_host(self.host)
        try:
            # The client has no call for /api/version; its own httpx client carries the host and headers.
            response = http_client(self.client).get("/api/version")
            response.raise_for_status()
            return str(response.json().get("version", "unknown"))
        except (httpx.TransportError, ConnectionError) as exc:
            raise InputError(f"Ollama server at {where} is not reachable ({type(exc).__name__}): start it with "
                             "`ollama serve`, set OLLAMA_HOST or engine.host, or use --backend embedded") from exc
        except (httpx.HTTPStatusError, ValueError) as exc:
            raise InputError(f"{where} does not answer like an Ollama server ({exc}); check OLLAMA_HOST") from exc

    def _model_details(self, pull: bool,
                       on_pull: Callable[[str, int | None, int | None], None] | None) -> dict[str, str]:
        try:
            show = self.client.show(self.model)
        except ollama.ResponseError as exc:
            if exc.status_code != 404:
                raise InputError(f"Ollama server at {redact_host(self.host)} refused `show {self.model}`: "
                                 f"{exc.error}") from exc
            if not pull:
                raise InputError(f"model {self.model!r} is not on the Ollama server at {redact_host(self.host)}: "
                                 f"run `ollama pull {self.model}` or pass --pull") from exc
            self._pull(on_pull)
            show = self.client.show(self.model)
        details = show.details
        digest = next((m.digest for m in self.client.list().models if _same_model(m.model, self.model)), None)
        # The server caps num_ctx at the model's training context (effectiveContext, server/sched.go).
        self.context_limit = next((int(v) for k, v in (show.modelinfo or {}).items()
                                   if k.endswith(".context_length") and isinstance(v, int) and v > 0), None)
        self.can_think = "thinking" in (show.capabilities or [])
        self._modelinfo = dict(show.modelinfo or {})  # the GGUF metadata: the KV cache is computed from it
        return {
            "model_capabilities": ",".join(show.capabilities or []) or "unknown",
            "model_context_length": str(self.context_limit or "unknown"),
            "model_digest": digest or "unknown",
            "model_family": (details.family if details else None) or "unknown",
            "model_parameter_size": (details.parameter_size if details else None) or "unknown",
            "model_quantization": (details.quantization_level if details else None) or "unknown",
        }

    def _pull(self, on_pull: Callable[[str, int | None, int | None], None] | None) -> None:
        try:
            for progress in self.client.pull(self.model, stream=True):
                if on_pull is not None:
                    on_pull(progress.status or "", progress.completed, progress.total)
        except ollama.ResponseError as exc:
            raise InputError(f"`ollama pull {self.model}` failed: {exc.error}; check the model name") from exc

    @property
    def base_model(self) -> str:
        return self.model

    def describe(self) -> dict[str, str]:
        return {"engine": "ollama", "engine_version": self.version, "model": self.model,
                "ollama_host": redact_host(self.host), **self._details}

    def start_trial(self, num_ctx: int, *, server: Mapping[str, Any] | None = None) -> float | None:
        if num_ctx == self._loaded_ctx:
            return None
        start = time.perf_counter()
        try:
            self.client.chat(self.model, messages=[], options={"num_ctx": num_ctx}, keep_alive=self.keep_alive)
        except (ollama.ResponseError, httpx.HTTPError, ConnectionError) as exc:
            raise BackendError(f"Ollama could not load {self.model} with num_ctx={num_ctx}: {exc}") from exc
        self._loaded_ctx = num_ctx
        self._after_load = True
        return time.perf_counter() - start

    def resources(self, settings: InferenceSettings) -> dict[str, float]:
        """The loaded model's ``size`` in ``/api/ps`` (what Ollama reserved for it: weights, KV cache and compute
        buffers, by its own estimate; not a measured peak) and the KV cache of ``num_ctx`` computed from the
        model's metadata (``OLLAMA_NUM_PARALLEL`` and ``OLLAMA_KV_CACHE_TYPE`` are the server's: taken as 1 and
        f16)."""
        found: dict[str, float] = {}
        kv = kv_cache_mib(self._modelinfo, settings.num_ctx)
        if kv is not None:
            found["kv_cache_mb"] = kv
        try:
            loaded = [m for m in self.client.ps().models if _same_model(m.model, self.model)]
        except (ollama.ResponseError, httpx.HTTPError, ConnectionError):
            loaded = []
        if loaded and loaded[0].size:
            found["memory_mb"] = loaded[0].size / MIB
        return found

    @property
    def reload_threshold(self) -> float:
        """The ``load_duration`` (ms) above which a request counts as one the server reloaded the model for."""
        if self.reload_threshold_ms is not None:
            return self.reload_threshold_ms
        if not self._warm_ms:
            return 250.0  # before the first warm request: well above a warm one, below any load in docs/api.md
        return max(RELOAD_FACTOR * statistics.median(self._warm_ms), RELOAD_FLOOR_MS)

    def serving_tags(self) -> dict[str, str]:
        warm = f"{statistics.median(self._warm_ms):.2f}" if self._warm_ms else "none yet"
        return {"reload_threshold_ms": f"{self.reload_threshold:.1f}", "warm_load_ms": warm}

    def _reloaded(self, load_ms: float) -> bool:
        """Whether the server reloaded the model inside a request that reported ``load_ms``; a warm one is kept for
        the threshold. The first request after :meth:`start_trial`'s load is warm whatever it reports."""
        with self._lock:  # clients of a concurrent trial call this from their threads
            reloaded = not self._after_load and load_ms > self.reload_threshold
            self._after_load = False
            if not reloaded:
                self._warm_ms = [*self._warm_ms, load_ms][-_WARM_SAMPLES:]
            return reloaded

    def _cut(self, messages: list[Message], settings: InferenceSettings, counted: int | None, thought: int) -> bool:
        """Whether the server cut this prompt to fit num_ctx (pipeline.engines.truncation). Under ``format`` the
        count of a model that thought is that of the answer's own request, whose prompt holds the thinking: taken
        off."""
        shape = (settings.few_shot, settings.prompt_variant, settings.example_selection)
        return self.prompt_sizes.cut(shape, estimate_tokens(messages), counted and counted - thought,
                                     settings.num_ctx)

    def count_prompt_tokens(self, messages: list[Message]) -> int | None:
        return None  # Ollama has no tokenize call; the runner falls back to the padded estimate

    def generate(self, messages: list[Message], settings: InferenceSettings, *,
                 schema: dict[str, Any]) -> Generation:
        fmt = {"off": None, "json": "json", "schema": schema}[settings.format]
        pieces: list[str] = []
        final = None
        ttft = None
        thought: list[float] = []  # when each thinking piece arrived
        start = time.perf_counter()
        with http_failures(f"Ollama server at {redact_host(self.host)}", self.timeout_s):
            try:
                for chunk in self.client.chat(self.model, messages=messages, options=settings.options(),
                                              format=fmt, stream=True, keep_alive=self.keep_alive,
                                              think=_THINK.get(settings.think, settings.think)):
                    if chunk.message.thinking:
                        thought.append(time.perf_counter() - start)
                    if ttft is None and chunk.message.content:
                        ttft = time.perf_counter() - start
                    pieces.append(chunk.message.content or "")
                    if chunk.done:
                        final = chunk
            except ollama.ResponseError as exc:
                where = "mid-stream" if exc.status_code == -1 else f"HTTP {exc.status_code}"
                raise RequestFailed(f"Ollama error ({where}): {exc.error}") from exc
        latency = time.perf_counter() - start
        if final is None:
            raise RequestFailed("the stream ended without a final chunk")
        load_ms = (final.load_duration or 0) / _NS_PER_MS
        return Generation(
            text="".join(pieces),
            latency_ms=latency * 1000,
            ttft_ms=ttft * 1000 if ttft is not None else None,
            prefill_ms=(final.prompt_eval_duration or 0) / _NS_PER_MS,
            decode_ms=(final.eval_duration or 0) / _NS_PER_MS,
            prompt_tokens=final.prompt_eval_count,  # the whole prompt, its cached prefix included
            input_truncated=self._cut(messages, settings, final.prompt_eval_count,
                                      len(thought) if settings.format != "off" else 0),
            prompt_eval_tokens=None,  # how much of it was evaluated (not cached) Ollama does not say
            output_tokens=final.eval_count or 0,
            decode_tokens=final.eval_count,
            truncated=final.done_reason == "length",
            server_ms=(final.total_duration or 0) / _NS_PER_MS,
            reload_ms=load_ms if self._reloaded(load_ms) else None,
            thinking_ttft_ms=thought[0] * 1000 if thought else None,
            thinking_ms=(thought[-1] - thought[0]) * 1000 if thought else None,
            thinking_tokens=len(thought) if thought else None,
        )

    def create_model(self, name: str, *, base: str, system: str | None, parameters: dict[str, Any],
                     messages: list[Message]) -> None:
        try:
            self.client.create(model=name, from_=base, system=system, parameters=parameters, messages=messages)
        except ollama.ResponseError as exc:
            raise RequestFailed(f"`ollama create {name}` failed: {exc.error}") from exc

    def chat_with(self, name: str, messages: list[Message], *, schema: dict[str, Any] | None, fmt: str,
                  think: str = "default") -> str:
        answer = self.client.chat(name, messages=messages, format={"off": None, "json": "json", "schema": schema}[fmt],
                                  think=_THINK.get(think, think))
        return answer.message.content or ""

    def close(self) -> None:
        http_client(self.client).close()


def _same_model(a: str, b: str) -> bool:
    """Ollama's names: a name without a tag means ``:latest``."""
    def tagged(name: str) -> str:
        return name if ":" in name.rsplit("/", 1)[-1] else f"{name}:latest"

    return tagged(a) == tagged(b)
