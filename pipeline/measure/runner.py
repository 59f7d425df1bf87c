"""Run one trial: render every request, check it fits the context, warm up after loads, time each request.

The loop reads like the method: build requests → check they fit → make sure the model is loaded (loads and
warm-up kept apart from all timings) → run and score each request → stop early when the trial can no longer
meet a constraint (:func:`abort_reason`). A setting with ``cache: exact`` or ``semantic`` serves each request
through the trial's own response cache (:mod:`pipeline.cache`), empty at the trial's start and filled by its answers
in arrival order: a hit is the kept answer, scored against the request that got it and timed by the cache alone,
and false when it serves that request worse than the one it was made for. At a ``concurrency`` above 1 the
requests are sent by that many closed-loop clients (each sends its next request when its answer is in), and the
span from the first request to the last answer gives the throughput.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace

from pipeline.cache.embedder import TextEmbedder, load_embedder
from pipeline.cache.exact import ExactCache, Lookup
from pipeline.cache.semantic import DEFAULT_THRESHOLD, SemanticCache
from pipeline.cache.served import EmbedFailed, ServerEmbedder
from pipeline.engines.base import Backend, Generation, Message, RequestFailed, model_digest
from pipeline.engines.serving import combination_problem
from pipeline.engines.settings import InferenceSettings
from pipeline.engines.tokens import estimate_tokens
from pipeline.errors import BackendError
from pipeline.job.experiment import Example
from pipeline.job.prompts import PromptLibrary
from pipeline.job.scoring import Scorer
from pipeline.measure.metrics import optimistic_bound
from pipeline.measure.racing import Race
from pipeline.measure.records import RequestRecord
from pipeline.measure.registry import Constraint, bounded_metrics, metric_direction

__all__ = ["Abort", "PreparedRequest", "SettingRun", "TrialOutcome", "TrialPlan", "abort_reason", "can_abort",
           "check_fit", "prepare_requests", "run_trial"]


@dataclass(frozen=True)
class TrialPlan:
    """What every trial of a study runs with, built once: how to prompt, where to send, how to score."""

    prompts: PromptLibrary
    backend: Backend
    scorer: Scorer
    warmup: Example
    warmup_requests: int = 1
    repetitions: int = 1
    margin: float = 0.1
    abort_on: tuple[Constraint, ...] = ()
    never_cache: frozenset[str] = frozenset()  # labels whose answers a cache never keeps (the manifest's)
    server_embedder: ServerEmbedder | None = None  # a semantic cache's with cache_embedder: server


@dataclass(frozen=True)
class PreparedRequest:
    example: Example
    messages: list[Message]
    estimated_tokens: int


@dataclass(frozen=True)
class Abort:
    """Why a trial stopped early: ``constraint`` cannot be met, its metric can at best reach ``bound``."""

    constraint: Constraint
    bound: float
    requests: int
    planned: int

    def describe(self) -> str:
        return (f"stopped after {self.requests} of {self.planned} requests: {self.constraint.describe()} cannot "
                f"be met ({self.constraint.metric} can at best reach {self.bound:.4g})")


@dataclass
class TrialOutcome:
    records: list[RequestRecord] = field(default_factory=list)
    model_loads: int = 0
    model_load_ms: float = 0.0
    warmup_requests: int = 0
    infeasible: str | None = None
    aborted: Abort | None = None
    raced: Race | None = None  # stopped by racing: a front point dominates it at the error rate
    span_s: float | None = None  # first request sent to last answer
    tags: dict[str, str] = field(default_factory=dict)  # what the backend served this trial with
    resources: dict[str, float] = field(default_factory=dict)  # what the setting held (Backend.resources)


def can_abort(constraint: Constraint) -> bool:
    """Whether requests can show early that ``constraint`` will be broken: a limit on the side a perfect
    request cannot help (a maximum on a latency, a minimum on a rate)."""
    if constraint.metric not in bounded_metrics():
        return False
    wanted = "minimize" if constraint.max is not None else "maximize"
    return metric_direction(constraint.metric) == wanted


def abort_reason(records: list[RequestRecord], planned: int, constraints: tuple[Constraint, ...]) -> Abort | None:
    """The first constraint that the trial cannot meet whatever its remaining requests give, or None.

    Exact, not a guess: with every remaining request perfect (see ``scoring.optimistic_bound``) the
    constraint would still be broken, so the full trial would be infeasible too.
    """
    if len(records) >= planned:
        return None
    for constraint in constraints:
        if can_abort(constraint):
            bound = optimistic_bound(records, planned, constraint.metric)
            if constraint.breaks(bound):
                return Abort(constraint, bound, len(records), planned)
    return None


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


class SettingRun:
    """One setting measured on one backend, a request at a time: the requests rendered once, the fit check,
    the load and warm-up (kept apart from every timing), and timed requests — a model reload inside a request
    counted as a load and the request measured again."""

    def __init__(self, settings: InferenceSettings, examples: list[Example], plan: TrialPlan) -> None:
        self.settings, self.plan = settings, plan
        self.requests = prepare_requests(examples, plan.prompts, settings)
        # Warm up on a request outside the timed set: with the timed requests' own text, the first of them would
        # find its whole prompt cached and look faster than any real request.
        self._warmup = prepare_requests([plan.warmup], plan.prompts, settings)[0]
        self.outcome = TrialOutcome()
        self._lock = threading.Lock()
        self.cache, self._model = self._cache(), ""
        if self.cache is not None:
            description = plan.backend.describe()
            self._model = f"{description['model']}@{model_digest(description)}"
        # what each request expects, by its text: a semantic hit is judged against the request it was made for too
        self._expected = {r.example.request: r.example for r in self.requests}

    def check_fit(self) -> str | None:
        """Why the setting cannot be served (server settings that do not go together) or cannot fit its context
        (then it must not run), or None; also kept on the outcome."""
        self.outcome.infeasible = (combination_problem(self.settings.server)
                                   or check_fit(self.requests, self.settings, self.plan.backend,
                                                margin=self.plan.margin))
        return self.outcome.infeasible

    def ready(self) -> None:
        """Load the setting's context (or start the server with its settings) if the backend must, and warm up
        after a load."""
        load_seconds = self.plan.backend.start_trial(self.settings.num_ctx, server=self.settings.server)
        if load_seconds is not None:
            self._loaded(load_seconds * 1000)
        self.outcome.tags.update(self.plan.backend.serving_tags())
        self.plan.backend.reset_peak_memory()  # the peak of the timed requests, not of the load

    def measure(self, request: PreparedRequest) -> RequestRecord:
        """Time and score one request (through the trial's cache, when it has one); the record is also appended to
        the outcome."""
        found = None
        if self.cache is not None:
            try:
                found = self.cache.lookup(request.messages, request.example.schema.document,
                                          self.settings.as_params(), self._model)
            except EmbedFailed as exc:  # the server's embedding model stopped answering: the trial cannot go on
                raise BackendError(f"the semantic cache's embedder: {exc}") from exc
        if found is not None and found.answer is not None:
            record = _hit(request, found, self.plan.scorer, self._expected.get(found.source, request.example))
        else:
            record = self._answered(request)
        if found is not None and found.answer is None:
            # a miss pays for its lookup before the engine answers; an answer that follows the schema is kept
            # (a request the meaning lookup passed over could have been served another's answer: not a false hit)
            record = replace(record, latency_ms=record.latency_ms + found.ms, cache_ms=found.ms,
                             false_hit=False if found.kind == "semantic" else None)
            if record.score.schema_valid:
                self.cache.store(found, record.answer)
        with self._lock:
            self.outcome.records.append(record)
        return record

    def held(self) -> None:
        """Record what the setting held while its requests ran (its peak memory, its KV cache: the engine's
        ``resources``) on the outcome."""
        self.outcome.resources.update(self.plan.backend.resources(self.settings))

    def _cache(self) -> ExactCache | None:
        """The trial's own cache, empty (None: the setting has none); no answer of another trial is ever in it.
        Loading the embedder the first time counts as a model load, kept out of every timing."""
        settings, plan = self.settings, self.plan
        never, label = plan.never_cache, plan.scorer.label if plan.never_cache else None
        if settings.cache == "off":
            return None
        if settings.cache == "exact":
            return ExactCache(never=never, label=label)
        if settings.cache_embedder == "server":
            if plan.server_embedder is None:
                raise BackendError("cache_embedder server: the study has no server embedder (engine.embed_model)")
            embedder: TextEmbedder = plan.server_embedder
        else:
            embedder, load_seconds = load_embedder()
            if load_seconds:
                self.outcome.model_loads += 1
                self.outcome.model_load_ms += load_seconds * 1000
        threshold = DEFAULT_THRESHOLD if settings.cache_threshold is None else settings.cache_threshold
        return SemanticCache(embedder, threshold=threshold, guard=settings.cache_guard, never=never, label=label)

    def _answered(self, request: PreparedRequest) -> RequestRecord:
        result = _generate(self.plan.backend, request, self.settings)
        if isinstance(result, Generation) and result.reload_ms is not None:
            # The server reloaded the model inside this request: count the reload, warm up, measure again.
            self._loaded(result.reload_ms)
            result = _generate(self.plan.backend, request, self.settings)
        return _record(request, result, self.plan.scorer)

    def _loaded(self, milliseconds: float) -> None:
        # The first calls after a load are many times slower; they are never timed.
        self.outcome.model_loads += 1
        self.outcome.model_load_ms += milliseconds
        for _ in range(self.plan.warmup_requests):
            _generate(self.plan.backend, self._warmup, self.settings)
            self.outcome.warmup_requests += 1


def run_trial(settings: InferenceSettings, examples: list[Example], plan: TrialPlan, *,
              on_request: Callable[[], None] = lambda: None,
              race: Callable[[list[RequestRecord], int], Race | None] | None = None) -> TrialOutcome:
    """Measure one setting on the given examples (one loop over the requests, kept whole so that the order of
    load, warm-up, timing, abort and racing reads as it happens).

    After each request the plan's ``abort_on`` constraints are checked with :func:`abort_reason`; the trial
    stops as soon as one of them can no longer be met. ``race`` (``racing.Racer.check``) is asked too, with the
    records so far and the planned count: the trial stops when it answers why.

    Returns:
        The outcome: one record per timed request, the model loads this trial caused and their time, why the
        setting is infeasible (then nothing ran), or why it stopped early.
    """
    run = SettingRun(settings, examples, plan)
    if run.check_fit():
        return run.outcome
    run.ready()
    queue = iter(run.requests * plan.repetitions)
    planned = len(run.requests) * plan.repetitions
    lock = threading.Lock()
    errors: list[BaseException] = []

    def client() -> None:
        # One closed-loop client: the next request as soon as its answer is in, until none is left or the
        # trial is stopped.
        while True:
            with lock:
                going = run.outcome.aborted is None and run.outcome.raced is None and not errors
                request = next(queue, None) if going else None
            if request is None:
                return
            try:
                run.measure(request)
            except BaseException as exc:  # a dead server: the trial fails once every client has stopped
                with lock:
                    errors.append(exc)
                return
            with lock:
                on_request()
                run.outcome.aborted = run.outcome.aborted or abort_reason(run.outcome.records, planned,
                                                                          plan.abort_on)
                if race is not None and run.outcome.aborted is None and run.outcome.raced is None:
                    run.outcome.raced = race(run.outcome.records, planned)

    start = time.perf_counter()
    if settings.concurrency == 1:
        client()
    else:
        clients = [threading.Thread(target=client, name=f"client-{i}") for i in range(settings.concurrency)]
        for thread in clients:
            thread.start()
        try:
            for thread in clients:
                thread.join()
        except BaseException as exc:  # Ctrl-C: no client takes another request; the ones in flight finish
            with lock:
                errors.append(exc)
            for thread in clients:
                thread.join()
    run.outcome.span_s = time.perf_counter() - start
    run.held()
    if errors:
        raise errors[0]
    return run.outcome


def _generate(backend: Backend, request: PreparedRequest, settings: InferenceSettings) -> Generation | RequestFailed:
    try:
        return backend.generate(request.messages, settings, schema=request.example.schema.document)
    except RequestFailed as exc:
        return exc


def _hit(request: PreparedRequest, found: Lookup, scorer: Scorer, source: Example) -> RequestRecord:
    """A request served from the cache: the kept answer scored against this request's own expected answer, timed
    by the cache alone (the engine did no work for it); false when it is worse for this request than for
    ``source``, the request it was made for (a hit on another meaning: "#43" served "#42"'s answer); an exact hit
    is the same request's answer, never false (None: it could not be)."""
    example, answer = request.example, found.answer or ""
    score = scorer.score(answer, example.expected, example.schema, example.accepts)
    made_for = scorer.score(answer, source.expected, source.schema, source.accepts)
    return RequestRecord(example.id, example.request, example.expected, answer, score, found.ms,
                         prompt_tokens_estimated=request.estimated_tokens, cache=found.kind, cache_ms=found.ms,
                         false_hit=(score.field_accuracy < made_for.field_accuracy
                                    if found.kind == "semantic" else None))


def _record(request: PreparedRequest, result: Generation | RequestFailed, scorer: Scorer) -> RequestRecord:
    example = request.example
    if isinstance(result, RequestFailed):
        return RequestRecord(example.id, example.request, example.expected, "",
                             scorer.unanswered(example.expected, str(result)), float("nan"),
                             prompt_tokens_estimated=request.estimated_tokens, failed=True)
    return RequestRecord(
        request_id=example.id,
        request=example.request,
        expected=example.expected,
        answer=result.text,
        score=scorer.score(result.text, example.expected, example.schema, example.accepts),
        latency_ms=result.latency_ms,
        ttft_ms=result.ttft_ms,
        prefill_ms=result.prefill_ms,
        decode_ms=result.decode_ms,
        decode_tokens=result.decode_tokens,
        prompt_tokens_estimated=request.estimated_tokens,
        prompt_tokens_engine=result.prompt_tokens,
        prompt_tokens_evaluated=result.prompt_eval_tokens,
        output_tokens=result.output_tokens,
        truncated=result.truncated,
        server_ms=result.server_ms,
        thinking_ttft_ms=result.thinking_ttft_ms,
        thinking_ms=result.thinking_ms,
        thinking_tokens=result.thinking_tokens,
        input_truncated=result.input_truncated,
    )
