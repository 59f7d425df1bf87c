"""The one small protocol every inference backend implements."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import httpx

from pipeline.engines.settings import InferenceSettings
from pipeline.errors import BackendError

__all__ = ["Backend", "Generation", "ManagedServer", "Message", "ModelPublisher", "RequestFailed", "RequestShaper",
           "http_failures", "model_digest"]

# One chat message: {"role": "system" | "user" | "assistant", "content": text}.
Message = dict[str, str]


class RequestFailed(BackendError):
    """One request failed (timed out, was refused); the trial records it and goes on."""


@contextlib.contextmanager
def http_failures(server: str, timeout_s: float) -> Iterator[None]:
    """Translate the transport errors of one HTTP request as the failure policy reads them: a refused
    connection is a dead server (:class:`BackendError`, the trial fails), a timeout or a dropped connection one
    failed request (:class:`RequestFailed`, the trial goes on)."""
    try:
        yield
    except (httpx.ConnectError, ConnectionError) as exc:
        raise BackendError(f"{server} is gone: {exc}") from exc
    except httpx.TimeoutException as exc:
        raise RequestFailed(f"timed out after {timeout_s:g} s ({type(exc).__name__})") from exc
    except httpx.HTTPError as exc:
        raise RequestFailed(f"connection dropped ({type(exc).__name__}: {exc})") from exc


@dataclass(frozen=True)
class Generation:
    """What one request returned and how long each part took, in milliseconds.

    ``latency_ms`` is our own wall clock around the whole call. ``prefill_ms`` and ``decode_ms`` are the
    engine's own timings of prompt evaluation and of generating tokens. ``server_ms`` is a server's own total
    for the request (None in process). ``reload_ms`` is set when the model was reloaded inside this request:
    its latency then measures the reload, not the setting. For a model that thinks before it answers,
    ``ttft_ms`` is the first token of the answer, ``thinking_ttft_ms`` the first of the thinking, ``thinking_ms`` the
    span from that to the last thinking token and ``thinking_tokens`` how many it thought (None: it did not).
    """

    text: str
    latency_ms: float
    ttft_ms: float | None
    prefill_ms: float | None
    decode_ms: float | None
    prompt_tokens: int | None
    prompt_eval_tokens: int | None
    output_tokens: int
    decode_tokens: int | None
    truncated: bool
    server_ms: float | None = None
    reload_ms: float | None = None
    thinking_ttft_ms: float | None = None
    thinking_ms: float | None = None
    thinking_tokens: int | None = None
    input_truncated: bool = False  # the server cut the prompt to fit num_ctx (pipeline.engines.truncation)


class Backend(Protocol):
    """An inference engine. Besides its methods, a backend declares what it can do (a backend class subclasses
    this protocol, so the capabilities it does not have keep the defaults below):

    ``server_timings``: its generations carry a server's own total (``Generation.server_ms``), so the
    ``server_ms_*`` and ``overhead_ms_*`` metrics exist; ``keeps_contexts``: every ``num_ctx`` it has loaded
    stays loaded (in process), so trials need not be grouped by context to spare reloads; ``server_settings``:
    it starts its server itself and so can apply server settings (pipeline.engines.serving); ``concurrent``: it
    can answer several requests at once (``generate`` may be called from several threads); ``thinks``: it can
    switch a model's thinking (Ollama's ``think``); ``can_think``: whether its model has the thinking capability
    (None: not known); ``context_limit``: the model's training context, where the server caps ``num_ctx`` there
    (None: no cap known); ``fixed_context``: the context is set when a server that the tool does not start
    starts, so ``num_ctx`` cannot be searched; ``base_model``: what an Ollama Modelfile's ``FROM`` names.
    :meth:`serving_tags` says what the current trial is served with (a server's command line, its slots'
    context), recorded on the trial's run.

    Optional abilities are small protocols of their own: :class:`ModelPublisher`, :class:`ManagedServer`,
    :class:`RequestShaper`.
    """

    name: str
    server_timings: bool
    keeps_contexts: bool
    server_settings: bool
    concurrent: bool
    thinks: bool = False
    can_think: bool | None = None
    context_limit: int | None = None
    fixed_context: bool = False

    @property
    def base_model(self) -> str:
        """The model as a Modelfile's ``FROM`` names it: a model name on a server, or a GGUF file's path."""

    def describe(self) -> dict[str, str]:
        """Tags that identify the engine and model of this backend (recorded on every run)."""

    def start_trial(self, num_ctx: int, *, server: Mapping[str, Any] | None = None) -> float | None:
        """Make the model ready for a trial at ``num_ctx`` (and, for a backend with ``server_settings``, a server
        with those settings); return the seconds a (re)load or restart took, or None."""

    def count_prompt_tokens(self, messages: list[Message]) -> int | None:
        """Tokens of the prompt these messages render to, as the engine counts them; None if it cannot tell."""

    def generate(self, messages: list[Message], settings: InferenceSettings, *,
                 schema: dict[str, Any]) -> Generation:
        """Answer one chat request, streaming; raise RequestFailed when only this request failed."""

    def serving_tags(self) -> dict[str, str]:
        """What the current trial is served with, as tags of its run (none by default)."""
        return {}

    def reset_peak_memory(self) -> None:
        """Start measuring the engine's peak memory afresh: called when a trial's timed requests begin (after
        its load and warm-up)."""

    def resources(self, settings: InferenceSettings) -> dict[str, float]:
        """What serving ``settings`` holds, by metric name (pipeline.measure.registry, group ``memory``): the
        measured peak ``memory_mb`` since :meth:`reset_peak_memory`, the ``kv_cache_mb`` computed from the model's
        metadata (pipeline.engines.memory), the weights' ``model_mb``; only what the engine can tell (none by
        default). A new trial-level quantity is one key here and one declaration in the registry."""
        return {}

    def close(self) -> None:
        """Release the engine."""


def model_digest(description: dict[str, str]) -> str:
    """The digest of the model a backend serves, from its :meth:`Backend.describe` (a GGUF file's sha256, a
    server's model digest; ``unknown`` where the server does not say)."""
    return description.get("model_sha256") or description["model_digest"]


@runtime_checkable
class ModelPublisher(Protocol):
    """A backend on a server that can create a named model from a Modelfile's parts and answer with it (what
    ``ollama create`` and a chat with that model do); promotion's bundle check goes through it."""

    def create_model(self, name: str, *, base: str, system: str | None, parameters: dict[str, Any],
                     messages: list[Message]) -> None:
        """Create (or replace) model ``name`` on the server."""

    def chat_with(self, name: str, messages: list[Message], *, schema: dict[str, Any] | None, fmt: str,
                  think: str = "default") -> str:
        """One answer of model ``name``, with ``fmt`` (off, json, schema) and ``think`` as a study's request would
        send them."""


@runtime_checkable
class ManagedServer(Protocol):
    """A backend that starts its own server process: it can be stopped (the next ``start_trial`` starts it afresh)
    and says the command line it started the server with."""

    @property
    def command(self) -> list[str]:
        """The server's launch command of the current trial (empty before one started)."""

    def stop(self) -> None:
        """Stop the server, if it runs."""


@runtime_checkable
class RequestShaper(Protocol):
    """A backend whose requests are plain HTTP bodies (OpenAI-compatible servers): the body it would send."""

    def request_body(self, messages: list[Message], settings: InferenceSettings, *,
                     schema: dict[str, Any]) -> dict[str, Any]:
        """The JSON body of one chat request with these settings."""
