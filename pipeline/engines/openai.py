"""The OpenAI-compatible backend: any server speaking the chat-completions API (llama.cpp's ``llama-server``,
vLLM, SGLang, LM Studio, TGI, Ollama's ``/v1``), through httpx.

httpx rather than the ``openai`` package: it is already here (the ``ollama`` client is built on it), it gives the
raw server-sent events, so time to first token is taken at the first byte of answer text and the non-standard
fields some servers add to the last event (llama-server's ``timings``) are read as sent, and it never retries on
its own (the ``openai`` client retries twice by default, which would hide failed requests and time two
attempts as one).

A request streams (``stream: true`` with ``stream_options.include_usage``); ``format`` becomes
``response_format``: ``json`` → ``{"type": "json_object"}``, ``schema`` → ``{"type": "json_schema", ...}``.
Sampling options sent: ``max_tokens`` (num_predict), ``temperature``, ``top_p``, ``seed`` and ``top_k`` (not in
OpenAI's own API; llama-server, vLLM and SGLang take it). Where the server returns its own timings
(llama-server: ``prompt_n``, ``prompt_ms``, ``predicted_n``, ``predicted_ms``, ``cache_n``) they give the
prefill/decode breakdown and the server's total; otherwise only our wall clock is measured, and
``describe()`` says so (tag ``timings``).

The context size belongs to the server: ``num_ctx`` is only checked against, never sent.

Failures: an HTTP error, an error event, a timeout or a dropped connection is one failed request
(:class:`RequestFailed`); a server that refuses connections is a dead server (:class:`BackendError`).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator, Mapping
from typing import Any

import httpx

from pipeline.engines.base import Backend, Generation, Message, RequestFailed, http_failures
from pipeline.engines.settings import InferenceSettings
from pipeline.errors import BackendError, InputError, redact_url

__all__ = ["OpenAIBackend", "response_format"]

API_KEY_ENV = "OPENAI_API_KEY"


def response_format(fmt: str, schema: dict[str, Any]) -> dict[str, Any] | None:
    """The ``response_format`` of a request made with ``format`` ``fmt`` (off, json, schema)."""
    if fmt == "json":
        return {"type": "json_object"}
    if fmt == "schema":
        return {"type": "json_schema", "json_schema": {"name": "answer", "schema": schema, "strict": True}}
    return None


class OpenAIBackend(Backend):
    """A model on a server with an OpenAI-compatible chat-completions API."""

    name = "openai"
    keeps_contexts = True  # the server's context is its own: nothing to reload between trials
    server_settings = False
    concurrent = True
    fixed_context = True  # the server's context is set when it starts, which is not ours to do

    def __init__(self, host: str, model: str | None, *, timeout_s: float, label: str = "openai",
                 trust_env: bool = True) -> None:
        """Connect, find the model and send one short request (the preflight). ``trust_env``: honour proxy
        settings of the environment (off for a server on 127.0.0.1 the tool started).

        Raises:
            InputError: the server cannot be reached, does not answer like an OpenAI-compatible server, does not
                serve the model, or refuses the request options.
        """
        self.host = host.rstrip("/")
        self.timeout_s = timeout_s
        self.label = label
        headers = {"Authorization": f"Bearer {os.environ[API_KEY_ENV]}"} if os.environ.get(API_KEY_ENV) else {}
        self.client = httpx.Client(base_url=self.host, headers=headers, trust_env=trust_env,
                                   timeout=httpx.Timeout(timeout_s, connect=min(timeout_s, 5.0)))
        try:
            self.model = self._find_model(model)
            probe = self._probe()
        except BaseException:
            self.client.close()
            raise
        self.server_timings = probe.server_ms is not None

    @property
    def where(self) -> str:
        return redact_url(self.host)

    def _find_model(self, model: str | None) -> str:
        try:
            response = self.client.get("/models")
            response.raise_for_status()
            served = [str(item["id"]) for item in response.json()["data"]]
        except httpx.TransportError as exc:
            raise InputError(f"no OpenAI-compatible server answers at {self.where} ({type(exc).__name__}): start "
                             "it, or pass --host with its URL including /v1, e.g. http://127.0.0.1:8000/v1") from exc
        except (httpx.HTTPStatusError, ValueError, KeyError, TypeError) as exc:
            raise InputError(f"{self.where}/models does not answer like an OpenAI-compatible server ({exc}); "
                             "check --host (it usually ends in /v1)") from exc
        if model is None:
            if len(served) != 1:
                raise InputError(f"the server at {self.where} serves {len(served)} models ({', '.join(served)}); "
                                 "pass --model NAME")
            return served[0]
        if model not in served:
            raise InputError(f"model {model!r} is not served at {self.where}; it serves {', '.join(served)}")
        return model

    def _probe(self) -> Generation:
        probe = InferenceSettings(num_ctx=0, num_predict=1, temperature=0.0, top_p=1.0, top_k=1, few_shot=0,
                                  prompt_variant="", example_selection="static", format="off")
        try:
            return self.generate([{"role": "user", "content": "Hi"}], probe, schema={})
        except (RequestFailed, BackendError) as exc:
            raise InputError(f"the server at {self.where} refused a one-token request to {self.model!r}: {exc}; "
                             "check the model and the server's log") from exc

    @property
    def base_model(self) -> str:
        return self.model

    def describe(self) -> dict[str, str]:
        return {"engine": self.label, "engine_version": "unknown", "model": self.model, "model_digest": "unknown",
                "server_url": self.where,
                "timings": "server (the answer's timings)" if self.server_timings
                else "wall clock only (the server returns no timings)"}

    def start_trial(self, num_ctx: int, *, server: Mapping[str, Any] | None = None) -> float | None:
        return None

    def count_prompt_tokens(self, messages: list[Message]) -> int | None:
        return None  # the API has no tokenize call; the runner falls back to the padded estimate

    def request_body(self, messages: list[Message], settings: InferenceSettings, *,
                     schema: dict[str, Any]) -> dict[str, Any]:
        """The chat-completions request these settings make (also what promotion writes as request defaults)."""
        body: dict[str, Any] = {
            "model": self.model, "messages": messages, "max_tokens": settings.num_predict,
            "temperature": settings.temperature, "top_p": settings.top_p, "top_k": settings.top_k,
            "seed": settings.seed}
        fmt = response_format(settings.format, schema)
        if fmt is not None:
            body["response_format"] = fmt
        return body

    def generate(self, messages: list[Message], settings: InferenceSettings, *,
                 schema: dict[str, Any]) -> Generation:
        body = {**self.request_body(messages, settings, schema=schema), "stream": True,
                "stream_options": {"include_usage": True}}
        pieces: list[str] = []
        ttft = finish = usage = timings = None
        start = time.perf_counter()
        with http_failures(f"the server at {self.where}", self.timeout_s), \
                self.client.stream("POST", "/chat/completions", json=body) as response:
            if response.status_code >= 400:
                raise RequestFailed(f"HTTP {response.status_code}: {_error_text(response.read())}")
            for event in _events(response.iter_lines()):
                if "error" in event:
                    raise RequestFailed(f"error mid-stream: {_error_text(json.dumps(event))}")
                for choice in event.get("choices") or []:
                    text = (choice.get("delta") or {}).get("content") or ""
                    if text and ttft is None:
                        ttft = time.perf_counter() - start
                    pieces.append(text)
                    finish = choice.get("finish_reason") or finish
                usage = event.get("usage") or usage
                timings = event.get("timings") or timings
        latency = time.perf_counter() - start
        if finish is None:
            raise RequestFailed("the stream ended without a finish_reason")
        usage, timings = usage or {}, timings or {}
        prefill, decode = timings.get("prompt_ms"), timings.get("predicted_ms")
        return Generation(
            text="".join(pieces),
            latency_ms=latency * 1000,
            ttft_ms=ttft * 1000 if ttft is not None else None,
            prefill_ms=prefill,
            decode_ms=decode,
            prompt_tokens=usage.get("prompt_tokens"),
            prompt_eval_tokens=timings.get("prompt_n"),
            output_tokens=usage.get("completion_tokens") or timings.get("predicted_n") or 0,
            decode_tokens=timings.get("predicted_n"),
            truncated=finish == "length",
            server_ms=prefill + decode if prefill is not None and decode is not None else None,
        )

    def close(self) -> None:
        self.client.close()


def _events(lines: Iterator[str]) -> Iterator[dict[str, Any]]:
    """The JSON payloads of a server-sent event stream, up to ``[DONE]``."""
    for line in lines:
        if not line.startswith("data:"):
            continue
        data = line[5:].strip()
        if data == "[DONE]":
            return
        try:
            yield json.loads(data)
        except ValueError as exc:
            raise RequestFailed(f"the stream sent an event that is not JSON: {data[:200]!r}") from exc


def _error_text(raw: bytes | str) -> str:
    """The message of an OpenAI-style error body (``{"error": {"message": ...}}``), else the body's start."""
    try:
        error = json.loads(raw).get("error")
    except (ValueError, AttributeError):
        error = None
    if isinstance(error, dict) and error.get("message"):
        return str(error["message"])[:500]
    if isinstance(error, str):
        return error[:500]
    text = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else raw
    return text[:500]
