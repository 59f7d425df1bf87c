"""Run one trial: render every request, check it fits the context, warm up after loads, time each request.

The loop reads like the method: build requests → check they fit → make sure the model is loaded (loads and
warm-up kept apart from all timings) → run and score each request.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from jsonschema.protocols import Validator

from pipeline.backends.base import Backend, Generation, RequestFailed
from pipeline.experiment import Example
from pipeline.prompts import Message, PromptLibrary
from pipeline.scoring import AnswerScore, RequestRecord, score_answer
from pipeline.space import InferenceSettings
from pipeline.tokens import estimate_tokens

__all__ = ["PreparedRequest", "TrialOutcome", "check_fit", "prepare_requests", "run_trial"]


WARMUP_EXAMPLE = Example("warmup", "warmup", "Add a task to buy printer paper on Sunday",
                         {"action": "create_task", "params": {"title": "buy printer paper", "due": "sunday"},
                          "success": True})


@dataclass(frozen=True)
class PreparedRequest:
    example: Example
    messages: list[Message]
    estimated_tokens: int


@dataclass
class TrialOutcome:
    records: list[RequestRecord] = field(default_factory=list)
    model_loads: int = 0
    model_load_ms: float = 0.0
    warmup_requests: int = 0
    infeasible: str | None = None


def prepare_requests(examples: list[Example], prompts: PromptLibrary,
                     settings: InferenceSettings) -> list[PreparedRequest]:
    """Render the messages of every request with a trial's prompt settings and estimate their size."""
    prepared = []
    for example in examples:
        messages = prompts.render(example.request, variant=settings.prompt_variant, few_shot=settings.few_shot,
                                  selection=settings.example_selection)
        prepared.append(PreparedRequest(example, messages, estimate_tokens(messages)))
    return prepared


def check_fit(prepared: list[PreparedRequest], settings: InferenceSettings, backend: Backend, *,
              margin: float) -> str | None:
    """Check that every prompt plus ``num_predict`` fits ``num_ctx``.

    The tiktoken estimate, padded by ``margin``, clears most settings at once; a prompt it does not clear is
    counted by the engine's own tokenizer, which decides.

    Returns:
        None when all fit, else why the setting is infeasible.
    """
    budget = settings.num_ctx - settings.num_predict
    for request in sorted(prepared, key=lambda r: r.estimated_tokens, reverse=True):
        padded = request.estimated_tokens * (1 + margin)
        if padded <= budget:
            return None
        tokens = backend.count_prompt_tokens(request.messages)
        if tokens is None:  # the engine cannot count before a call: the padded estimate decides
            return (f"prompt of request {request.example.id} is about {padded:.0f} tokens (estimate); with "
                    f"num_predict {settings.num_predict} it does not fit num_ctx {settings.num_ctx}")
        if tokens > budget:
            return (f"prompt of request {request.example.id} is {tokens} tokens; with num_predict "
                    f"{settings.num_predict} it does not fit num_ctx {settings.num_ctx}")
    return None


def run_trial(settings: InferenceSettings, examples: list[Example], *, prompts: PromptLibrary, backend: Backend,
              validator: Validator, schema: dict[str, Any], warmup: int, repetitions: int, margin: float,
              on_request: Callable[[], None] = lambda: None) -> TrialOutcome:
    """Measure one setting on the given examples.

    Returns:
        The outcome: one record per timed request, the model loads this trial caused and their time, or why
        the setting is infeasible (then nothing ran).
    """
    prepared = prepare_requests(examples, prompts, settings)
    # Warm up on a request outside the timed set: with the timed requests' own text, the first of them would
    # find its whole prompt cached and look faster than any real request.
    warmup_request = prepare_requests([WARMUP_EXAMPLE], prompts, settings)[0]
    outcome = TrialOutcome()
    outcome.infeasible = check_fit(prepared, settings, backend, margin=margin)
    if outcome.infeasible:
        return outcome
    def loaded(milliseconds: float) -> None:
        # The first calls after a load are many times slower; they are never timed.
        outcome.model_loads += 1
        outcome.model_load_ms += milliseconds
        for _ in range(warmup):
            _generate(backend, warmup_request, settings, schema)
            outcome.warmup_requests += 1

    load_seconds = backend.start_trial(settings.num_ctx)
    if load_seconds is not None:
        loaded(load_seconds * 1000)
    for _ in range(repetitions):
        for request in prepared:
            result = _generate(backend, request, settings, schema)
            if isinstance(result, Generation) and result.reload_ms is not None:
                # The server reloaded the model inside this request: count the reload, warm up, measure again.
                loaded(result.reload_ms)
                result = _generate(backend, request, settings, schema)
            outcome.records.append(_record(request, result, validator))
            on_request()
    return outcome


def _generate(backend: Backend, request: PreparedRequest, settings: InferenceSettings,
              schema: dict[str, Any]) -> Generation | RequestFailed:
    try:
        return backend.generate(request.messages, settings, schema=schema)
    except RequestFailed as exc:
        return exc


def _record(request: PreparedRequest, result: Generation | RequestFailed, validator: Validator) -> RequestRecord:
    example = request.example
    if isinstance(result, RequestFailed):
        failed = AnswerScore(False, False, False, False, 0.0, False, str(result))
        return RequestRecord(example.id, example.request, example.expected, "", failed, float("nan"), None, None,
                             None, None, request.estimated_tokens, None, 0, False, failed=True)
    return RequestRecord(
        request_id=example.id,
        request=example.request,
        expected=example.expected,
        answer=result.text,
        score=score_answer(result.text, example.expected, validator),
        latency_ms=result.latency_ms,
        ttft_ms=result.ttft_ms,
        prefill_ms=result.prefill_ms,
        decode_ms=result.decode_ms,
        decode_tokens=result.decode_tokens,
        prompt_tokens_estimated=request.estimated_tokens,
        prompt_tokens_engine=result.prompt_tokens,
        output_tokens=result.output_tokens,
        truncated=result.truncated,
        server_ms=result.server_ms,
    )
