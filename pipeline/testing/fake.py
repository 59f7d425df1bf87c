"""An in-memory backend for tests of logic that needs no model (as httpx ships ``MockTransport``).

:class:`FakeBackend` implements the backend protocol without an engine: ``answer`` decides the text of each
request (by default: the answer of the few-shot example whose request is the user message, else an empty
object), and latencies follow a fixed, deterministic cost model — a base cost, per prompt character and per
answer character — so that settings differ in speed the way a real engine's do (longer prompts and answers
are slower) and a study has a front to find. Requests can be made to fail.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from typing import Any

from pipeline.engines.base import Backend, Generation, Message, RequestFailed
from pipeline.engines.settings import InferenceSettings

__all__ = ["FakeBackend", "answers_by_request"]

Answer = Callable[[list[Message], InferenceSettings], str]


def _from_examples(messages: list[Message], settings: InferenceSettings) -> str:
    """The answer a few-shot pair in the prompt gives to the same request, else ``{}``."""
    request = messages[-1]["content"]
    for question, reply in zip(messages[1:-1:2], messages[2:-1:2]):
        if question["content"] == request:
            return reply["content"]
    return "{}"


class FakeBackend(Backend):
    """A backend answering from a function, with deterministic timings (milliseconds)."""

    name = "fake"
    server_timings = False
    keeps_contexts = True
    server_settings = False
    concurrent = True

    def __init__(self, answer: Answer = _from_examples, *, base_ms: float = 20.0, per_prompt_char_ms: float = 0.05,
                 per_answer_char_ms: float = 0.5, load_ms: float = 30.0,
                 fail: Callable[[list[Message]], bool] = lambda messages: False) -> None:
        self.answer = answer
        self.base_ms, self.per_prompt_char_ms, self.per_answer_char_ms = base_ms, per_prompt_char_ms, per_answer_char_ms
        self.load_ms = load_ms
        self.fail = fail
        self.loaded: set[int] = set()
        self.calls: list[list[Message]] = []
        self.schemas: list[dict[str, Any]] = []

    @property
    def base_model(self) -> str:
        return "fake-model"

    def describe(self) -> dict[str, str]:
        return {"engine": "fake", "engine_version": "0", "model": "fake-model", "model_digest": "0" * 64}

    def start_trial(self, num_ctx: int, *, server: Mapping[str, Any] | None = None) -> float | None:
        if num_ctx in self.loaded:
            return None
        self.loaded.add(num_ctx)
        return self.load_ms / 1000

    def count_prompt_tokens(self, messages: list[Message]) -> int:
        return sum(len(m["content"]) for m in messages) // 4 + 4 * len(messages)

    def generate(self, messages: list[Message], settings: InferenceSettings, *,
                 schema: dict[str, Any]) -> Generation:
        self.calls.append(messages)
        self.schemas.append(schema)
        if self.fail(messages):
            raise RequestFailed("the fake backend was told to fail this request")
        text = self.answer(messages, settings)
        tokens = max(1, len(text) // 4)
        truncated = tokens > settings.num_predict
        if truncated:
            text, tokens = text[: settings.num_predict * 4], settings.num_predict
        prompt_chars = sum(len(m["content"]) for m in messages)
        prefill = prompt_chars * self.per_prompt_char_ms
        decode = len(text) * self.per_answer_char_ms
        return Generation(text=text, latency_ms=self.base_ms + prefill + decode, ttft_ms=self.base_ms + prefill,
                          prefill_ms=prefill, decode_ms=decode, prompt_tokens=self.count_prompt_tokens(messages),
                          prompt_eval_tokens=None, output_tokens=tokens, decode_tokens=tokens, truncated=truncated)

    def close(self) -> None:
        self.loaded.clear()


def answers_by_request(table: dict[str, Any], default: Any = None) -> Answer:
    """An ``answer`` function from user message to answer (JSON values are dumped; strings sent as they are)."""
    def answer(messages: list[Message], settings: InferenceSettings) -> str:
        value = table.get(messages[-1]["content"], default)
        return value if isinstance(value, str) else json.dumps(value)

    return answer

