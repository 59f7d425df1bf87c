"""Silent truncation: telling from a server's prompt count that it cut the prompt to fit ``num_ctx``.

A prompt that does not fit ``num_ctx`` is no error on an Ollama server: it drops the oldest messages but the
system ones (the few-shot examples first) until the rest fits, then cuts tokens (``chatPrompt`` in
server/prompt.go), and answers as usual. The only trace is ``prompt_eval_count``, the whole prompt as the server
counted it: fewer tokens than the messages sent.

:class:`PromptSizes` knows how many tokens to expect. The tiktoken estimate (pipeline.engines.tokens) counts with
another tokenizer than the model's, so it learns the ratio of the server's count to the estimate from prompts
that surely fit (estimate at most two thirds of ``num_ctx``: even at 1.5 times the estimate they fit), for each prompt
shape (few-shot count, prompt variant, example selection: the same system prompt and kinds of messages) and over
all of them. A request was cut when the server counted clearly fewer tokens than expected and the expected
prompt could not have fit.

Measured on the Task API prompts with SmolLM2's tokenizer: the server counts 1.10–1.19 times the estimate, the
same within 0.02 for one shape; dropping the smallest example pair removes about 9% of a 4-shot prompt. Hence
the tolerances: 5% against a shape's own ratio, 8% against the study's, 30% before anything was learnt (a cut
of one example pair goes unseen then: a study learns from its baseline and its roomier contexts first).
"""

from __future__ import annotations

import statistics
import threading
from collections.abc import Hashable

__all__ = ["PromptSizes"]

SHAPE_TOLERANCE = 0.05
STUDY_TOLERANCE = 0.08
UNCALIBRATED_TOLERANCE = 0.30
_SURELY_FITS = 2 / 3  # an estimate at most this share of num_ctx fits unless the model counts 1.5 times as many
_KEPT = 200  # ratios kept per shape: the latest


class PromptSizes:
    """The server's prompt counts, learnt from its own answers; safe to share between client threads."""

    def __init__(self) -> None:
        self._shapes: dict[Hashable, list[float]] = {}
        self._lock = threading.Lock()

    def expected(self, shape: Hashable, estimate: int) -> tuple[float, float]:
        """The tokens the server should count for a prompt of this shape and estimate, and the relative
        tolerance of that expectation."""
        with self._lock:
            own = list(self._shapes.get(shape, ()))
            every = [] if own else [r for ratios in self._shapes.values() for r in ratios]
        if own:
            return estimate * statistics.median(own), SHAPE_TOLERANCE
        if every:
            return estimate * statistics.median(every), STUDY_TOLERANCE
        return float(estimate), UNCALIBRATED_TOLERANCE

    def cut(self, shape: Hashable, estimate: int, counted: int | None, num_ctx: int) -> bool:
        """Whether the server cut this prompt: it counted fewer tokens than expected by more than the tolerance,
        and the expected prompt does not fit ``num_ctx``. A prompt that surely fits teaches the ratio.

        Returns:
            True for a prompt the server cut; False when it did not, or gave no count.
        """
        if not counted or estimate <= 0:
            return False
        expected, tolerance = self.expected(shape, estimate)
        cut = counted < expected * (1 - tolerance) and expected * (1 + tolerance) > num_ctx
        if not cut and estimate <= _SURELY_FITS * num_ctx:
            with self._lock:
                ratios = self._shapes.setdefault(shape, [])
                ratios.append(counted / estimate)
                del ratios[:-_KEPT]
        return cut
