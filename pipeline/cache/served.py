"""A server's own embedding model for the semantic cache: Ollama's ``/api/embed`` or an OpenAI-compatible
``/v1/embeddings`` (llama-server started with ``--embeddings``, vLLM, any server that speaks it).

``cache_embedder: server`` in the search space chooses it over the in-process all-MiniLM-L6-v2
(:mod:`pipeline.cache.embedder`); the config's engine section names the model (``embed_model``) and, where the
embedding server is not the engine's own, its URL (``embed_url``) and API (``embed_api``). The request, as each
server reads it:

- Ollama (``server/routes.go`` EmbedHandler, ollama/ollama at fb30760): ``POST /api/embed`` with ``model`` and
  ``input``; the answer's ``embeddings[0]``, already L2-normalised by the server. A model the server lacks is 404
  ``model '<name>' not found``; a model that cannot embed (a generative model: Ollama starts llama-server with
  ``--embedding`` only for a GGUF with a pooling type) is llama-server's 501 relayed.
- OpenAI-compatible: ``POST <base>/embeddings`` with ``model`` and ``input``; the answer's
  ``data[0].embedding``. llama-server without ``--embeddings`` answers 501 ``This server does not support
  embeddings. Start it with `--embeddings```.

Vectors are L2-normalised here too, so the cosine of two texts is their dot product whatever the server does.
:func:`ServerEmbedder.check` embeds one text before a study records anything: a model or server that does not
embed is a one-line error then, not a failed trial later. The environment's proxy settings are honoured, as for
the engine (``OPENAI_API_KEY`` is sent as the OpenAI backend sends it).
"""

from __future__ import annotations

import os
from typing import Literal

import httpx
import numpy as np

from pipeline.errors import InputError, redact_url

__all__ = ["EMBED_APIS", "EmbedFailed", "ServerEmbedder"]

EmbedApi = Literal["ollama", "openai"]
EMBED_APIS: tuple[str, ...] = ("ollama", "openai")
_API_KEY_ENV = "OPENAI_API_KEY"


class EmbedFailed(RuntimeError):
    """The server did not embed a text (its status and message, or why it could not be reached)."""


class ServerEmbedder:
    """A server's embedding model: a text to a unit vector (see the module docstring). Safe to share between
    threads (httpx's client is)."""

    def __init__(self, url: str, model: str, api: EmbedApi, *, timeout_s: float = 30.0) -> None:
        if api not in EMBED_APIS:
            raise ValueError(f"embedding API {api!r} is not one of {', '.join(EMBED_APIS)}")
        self.url, self.model, self.api = url.rstrip("/"), model, api
        self.name = f"{api}:{model}"
        headers = ({"Authorization": f"Bearer {os.environ[_API_KEY_ENV]}"}
                   if api == "openai" and os.environ.get(_API_KEY_ENV) else {})
        self._client = httpx.Client(base_url=self.url, headers=headers,
                                    timeout=httpx.Timeout(timeout_s, connect=min(timeout_s, 5.0)))

    @property
    def where(self) -> str:
        """The server's URL, fit for messages (no credentials)."""
        return redact_url(self.url)

    def embed(self, text: str) -> np.ndarray:
        """The text's unit vector (float32).

        Raises:
            EmbedFailed: the server could not be reached, refused, or answered without a vector.
        """
        path = "/api/embed" if self.api == "ollama" else "/embeddings"
        try:
            response = self._client.post(path, json={"model": self.model, "input": text})
        except httpx.HTTPError as exc:
            raise EmbedFailed(f"no answer from {self.where}{path} ({type(exc).__name__})") from exc
        if response.status_code >= 400:
            raise EmbedFailed(f"{self.where}{path} answered {response.status_code}: {_message(response)}")
        try:
            body = response.json()
            values = body["embeddings"][0] if self.api == "ollama" else body["data"][0]["embedding"]
            vector = np.asarray(values, dtype=np.float32)
        except (ValueError, KeyError, IndexError, TypeError) as exc:
            raise EmbedFailed(f"{self.where}{path} answered without an embedding ({exc!r})") from exc
        norm = float(np.linalg.norm(vector))
        if vector.ndim != 1 or not vector.size or not np.isfinite(norm) or norm == 0:
            raise EmbedFailed(f"{self.where}{path} answered an embedding that is no vector of finite numbers")
        return vector / norm

    def check(self, where: str) -> None:
        """Embed one text, so that a server or model that does not embed is found before anything is recorded.

        Raises:
            InputError: it does not, in one line naming ``where`` (the config's key) and the fix.
        """
        try:
            self.embed("a probe")
        except EmbedFailed as exc:
            fix = (f"pull it (ollama pull {self.model}) or name a model the server embeds with" if self.api == "ollama"
                   else "start the server with --embeddings (llama-server) or name a model it embeds with")
            raise InputError(f"{where}: model {self.model!r} does not embed at {self.where} ({exc}); {fix}, or use "
                             "cache_embedder: minilm") from exc

    def close(self) -> None:
        self._client.close()


def _message(response: httpx.Response) -> str:
    """The error a server gave: Ollama's ``{"error": "..."}``, OpenAI's ``{"error": {"message": ...}}``, or the
    text."""
    try:
        error = response.json().get("error")
    except ValueError:
        return response.text.strip()[:200]
    if isinstance(error, dict):
        error = error.get("message")
    return str(error).strip()[:200] if error else response.text.strip()[:200]
