"""llama-cpp-python's private API, fenced: every use of it past its public surface is here.

Read against llama-cpp-python 0.3.36 (the version pyproject.toml pins). ``tests/test_private_apis.py`` checks
each name against the installed package, so a release that moves one fails there, by name.
"""

from __future__ import annotations

import contextlib
from typing import Any

__all__ = ["READ_AGAINST", "context_handle", "token_text", "without_extra_buffers"]

READ_AGAINST = "0.3.36"


def context_handle(llm: Any) -> Any:
    """The llama.cpp context pointer of a loaded ``Llama`` (``Llama._ctx.ctx``): its performance counters
    (``llama_perf_context``) take it, and ``Llama`` has no public accessor."""
    return llm._ctx.ctx


def token_text(llm: Any, token: int) -> str:
    """A token's text as the vocabulary holds it (``Llama._model.token_get_text``): what ``Llama.__init__``
    itself gives its chat formatter as the BOS and EOS tokens; ``Llama`` has no public accessor (its
    ``detokenize`` renders a token as a piece of output, not as the vocabulary's text)."""
    return llm._model.token_get_text(token)


@contextlib.contextmanager
def without_extra_buffers(bindings: Any):
    """Load models without llama.cpp's extra CPU buffer types (AMX and repacked weights).

    On CPUs that advertise AMX inside virtual machines, those kernels crash in batched decoding (any prompt
    of more than one token); plain CPU buffers are correct everywhere. ``Llama`` does not expose the
    ``use_extra_bufts`` model parameter, so it is set on the defaults it reads while loading
    (``llama_cpp.llama_cpp.llama_model_default_params``, which ``Llama.__init__`` calls).
    """
    default_params = bindings.llama_model_default_params

    def params() -> Any:
        value = default_params()
        value.use_extra_bufts = False
        return value

    bindings.llama_model_default_params = params
    try:
        yield
    finally:
        bindings.llama_model_default_params = default_params
