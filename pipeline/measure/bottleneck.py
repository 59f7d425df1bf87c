"""Where a setting's time goes, in words: its bottleneck named from its measurements by explicit rules, with the
levers for it.

The measurements are a trial's metrics: the shares of the engine-answered requests' time spent evaluating the
prompt (``prefill_share``), generating (``decode_share``) and elsewhere (``other_share``: the client, HTTP,
waiting for a slot, the grammar, the cache lookup), and the latency percentiles. The rules, in order:

1. **queue**: more clients than the server has slots (``concurrency`` > ``parallel``) and a p95 at least
   :data:`QUEUE_TAIL` times the p50: requests wait for a slot.
2. **unknown**: the engine reports no prefill and decode times (an OpenAI-compatible server without timings).
3. **prefill**, **decode** or **overhead**: the share that is at least :data:`DOMINANT` of the time.
4. **mixed**: no share is.

Each verdict names the levers of the search space that act on it (:data:`LEVERS`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

__all__ = ["DOMINANT", "LEVERS", "LEVER_SETTINGS", "QUEUE_TAIL", "Verdict", "verdict"]

DOMINANT = 0.5    # the share of the time that names the bottleneck
QUEUE_TAIL = 2.0  # p95 over p50 that, with more clients than slots, names the queue
LEVERS = {
    "queue": "more slots (parallel) or fewer clients at once (concurrency)",
    "prefill": "a shorter prompt (fewer few-shot examples, a shorter prompt variant) or the engine's prefix cache "
               "(cache_reuse)",
    "decode": "fewer output tokens (num_predict, a terser answer schema) or a faster quantization of the model",
    "overhead": "less work around generation (format, the response cache's lookup) or an engine closer to the "
                "client (in process)",
}

# The search-space settings that act on each bottleneck, as a config names them.
LEVER_SETTINGS: dict[str, tuple[str, ...]] = {
    "queue": ("parallel", "concurrency"),
    "prefill": ("few_shot", "prompt_variant", "example_selection", "cache_reuse", "cache"),
    "decode": ("num_predict", "format"),
    "overhead": ("format", "cache"),
}


@dataclass(frozen=True)
class Verdict:
    kind: str      # queue, prefill, decode, overhead, mixed or unknown
    sentence: str  # the verdict with its figures and levers, one line

    def __str__(self) -> str:
        return self.sentence


def _known(value: float | None) -> bool:
    return value is not None and not math.isnan(value)


def verdict(metrics: Mapping[str, float], *, concurrency: int = 1, slots: int = 1) -> Verdict:
    """The bottleneck of a trial with these ``metrics``, measured with ``concurrency`` clients on ``slots``
    server slots (see the module docstring)."""
    p50, p95 = metrics.get("latency_p50_ms"), metrics.get("latency_p95_ms")
    if concurrency > slots and _known(p50) and _known(p95) and p50 > 0 and p95 >= QUEUE_TAIL * p50:
        return Verdict("queue", f"queue-bound: p95 is {p95 / p50:.1f}x p50 at concurrency {concurrency} with "
                                f"{slots} slot{'s' * (slots != 1)}; the levers: {LEVERS['queue']}")
    shares = {kind: metrics.get(f"{kind}_share") for kind in ("prefill", "decode", "other")}
    if not all(_known(share) for share in shares.values()):
        return Verdict("unknown", "where the time goes is unknown: the engine reports no prefill and decode times")
    kind, share = max(shares.items(), key=lambda item: item[1])
    if share < DOMINANT:
        return Verdict("mixed", f"no one bottleneck: prefill {shares['prefill']:.0%}, decode {shares['decode']:.0%}, "
                                f"the rest {shares['other']:.0%} of the time")
    if kind == "decode":
        tokens, rate = metrics.get("output_tokens_mean"), metrics.get("decode_tokens_per_s")
        what = (f"decodes {tokens:.0f} tokens at {rate:.0f} tokens/s" if _known(tokens) and _known(rate)
                else "decodes")
        return Verdict("decode", f"decode-bound: {share:.0%} of the time {what}; the levers: {LEVERS['decode']}")
    if kind == "prefill":
        prompt = metrics.get("prompt_tokens_engine", metrics.get("prompt_tokens_estimated"))
        what = f"evaluates prompts of {prompt:.0f} tokens" if _known(prompt) else "evaluates the prompt"
        return Verdict("prefill", f"prefill-bound: {share:.0%} of the time {what}; the levers: {LEVERS['prefill']}")
    return Verdict("overhead", f"overhead-bound: {share:.0%} of the time is outside prefill and decode (the client, "
                               f"HTTP, a slot, the grammar, the cache); the levers: {LEVERS['overhead']}")
