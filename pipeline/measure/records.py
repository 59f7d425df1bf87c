"""One timed request as a trial keeps it: what was asked, what came back, how it scored and how long it took."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pipeline.job.scoring import AnswerScore

__all__ = ["RequestRecord"]


@dataclass(frozen=True)
class RequestRecord:
    """One timed request: what was asked, what came back, how it scored and how long it took (milliseconds)."""

    request_id: str
    request: str
    expected: Any
    answer: str
    score: AnswerScore
    latency_ms: float
    ttft_ms: float | None = None
    prefill_ms: float | None = None
    decode_ms: float | None = None
    decode_tokens: int | None = None
    prompt_tokens_estimated: int = 0
    prompt_tokens_engine: int | None = None
    prompt_tokens_evaluated: int | None = None  # of those, the ones the engine evaluated (the rest: its KV cache)
    output_tokens: int = 0
    truncated: bool = False
    failed: bool = False
    server_ms: float | None = None
    input_truncated: bool = False
    thinking_ttft_ms: float | None = None
    thinking_ms: float | None = None
    thinking_tokens: int | None = None
    cache: str = ""  # served from the response cache ("exact" or "semantic"); "" when the engine answered
    # a semantic hit that serves this request worse than the one it was made for; False: the meaning lookup ran
    # and served nothing worse; None: it could not serve another request's answer (no semantic lookup, an exact hit)
    false_hit: bool | None = None
    cache_ms: float | None = None  # the cache's own time (hashing, lookup), inside latency_ms; None: no cache

    @property
    def overhead_ms(self) -> float | None:
        """Our wall clock minus the server's own total: network and queueing."""
        return None if self.server_ms is None else self.latency_ms - self.server_ms

    @property
    def thinking_exhausted(self) -> bool:
        """The model thought until ``num_predict`` ran out and never answered."""
        return bool(self.thinking_tokens) and self.truncated and not self.answer
