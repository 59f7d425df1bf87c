"""The ollama client's private API, fenced: every use of it past its public surface is here.

Read against ollama 0.6.3 (the version pyproject.toml pins). ``tests/test_private_apis.py`` checks each name
against the installed package, so a release that moves one fails there, by name.
"""

from __future__ import annotations

import httpx
import ollama

__all__ = ["READ_AGAINST", "http_client"]

READ_AGAINST = "0.6.3"


def http_client(client: ollama.Client) -> httpx.Client:
    """The httpx client inside an ``ollama.Client`` (``Client._client``), which carries the server's address and
    headers: the client has no call for ``/api/version`` and no ``close``."""
    return client._client
