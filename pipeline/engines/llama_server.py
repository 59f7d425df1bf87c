"""The llama-server backend: llama.cpp's own HTTP server, started by the tool with each trial's server settings.

The server runs on 127.0.0.1 on a free port (pipeline.engines.process) and is spoken to through its
OpenAI-compatible API (pipeline.engines.openai), whose answers carry llama-server's own timings. A trial's
``num_ctx`` and server settings (``parallel``, ``threads``, ``batch_size``, KV-cache types, ...;
pipeline.engines.serving) are flags of the server, so :meth:`LlamaServerBackend.start_trial` restarts it when they
change — the study groups trials by them as it groups them by ``num_ctx`` for Ollama — and the restart is timed
as a load, never inside a latency. After each start the slots' real context is read from ``/slots``. A server
that died (killed, crashed) is started again by the next trial.
"""

from __future__ import annotations

import shlex
import subprocess
from collections.abc import Mapping
from functools import cached_property
from pathlib import Path
from typing import Any

import httpx

from pipeline.engines.base import Backend, Generation, Message, RequestFailed
from pipeline.engines.embedded import bundled_model_path, check_model_file, file_sha256, gguf_metadata
from pipeline.engines.memory import MIB, kv_cache_mib, peak_rss_mib, reset_peak_rss
from pipeline.engines.openai import OpenAIBackend
from pipeline.engines.process import ServerProcess, ServerStartError, find_binary
from pipeline.engines.serving import launch_args, load_key
from pipeline.engines.settings import InferenceSettings
from pipeline.errors import BackendError

__all__ = ["LlamaServerBackend"]

# The preflight server's context: enough for the one-token request that checks the model answers.
_PREFLIGHT_CTX = 512


class LlamaServerBackend(Backend):
    """A GGUF model served by a llama-server process this backend starts, restarts and stops."""

    name = "llama-server"
    server_timings = True
    keeps_contexts = False  # another num_ctx or server setting is another server process
    server_settings = True
    concurrent = True

    def __init__(self, model_path: Path | None = None, *, binary: str | Path | None = None,
                 extra_args: tuple[str, ...] = (), timeout_s: float = 120.0) -> None:
        """Find the binary and the model and start the server once with ``extra_args`` (the preflight).

        Raises:
            InputError: no binary, an unreadable model, or a server that refuses to start with these flags.
        """
        self.model_path = check_model_file(model_path or bundled_model_path())
        self.binary = find_binary(binary)
        self.extra_args = list(extra_args)
        self.timeout_s = timeout_s
        self._process: ServerProcess | None = None
        self._client: OpenAIBackend | None = None
        self._key: tuple[Any, ...] | None = None
        self._slots: list[dict[str, Any]] = []
        # Started with the configured flags, so that a bad flag or a model the server refuses is reported before
        # anything is recorded (ServerStartError is an input error); it also answers token counts until the
        # first trial starts the server with its own settings.
        self._launch(launch_args(_PREFLIGHT_CTX, {}))

    def _launch(self, args: list[str]) -> float:
        process = ServerProcess(self.binary, self.model_path, args + self.extra_args, startup_timeout_s=self.timeout_s)
        seconds = process.start()
        self._process = process
        try:
            self._client = OpenAIBackend(f"{process.url}/v1", None, timeout_s=self.timeout_s,
                                         label="llama.cpp llama-server", trust_env=False)
            self._slots = process.slots()
        except BaseException:
            self.stop()
            raise
        return seconds

    def stop(self) -> None:
        """Stop the server; the next trial starts a new one."""
        if self._client is not None:
            self._client.close()
        if self._process is not None:
            self._process.stop()
        self._client = self._process = None
        self._key = None

    @property
    def base_model(self) -> str:
        return str(self.model_path)

    @property
    def command(self) -> list[str]:
        """The running server's command line."""
        return self._process.command if self._process is not None else []

    @cached_property
    def _identity(self) -> tuple[str, str]:
        """The binary's version and the model file's SHA-256, found once: the file is read whole."""
        return _version(self.binary), file_sha256(self.model_path)

    def describe(self) -> dict[str, str]:
        version, sha256 = self._identity
        return {"engine": "llama.cpp llama-server", "engine_version": version,
                "model": self.model_path.name, "model_sha256": sha256,
                "server_binary": str(self.binary), "timings": "server (llama-server's timings)"}

    def serving_tags(self) -> dict[str, str]:
        """The server this trial ran on: its command line and its slots as ``/slots`` reports them."""
        return {"server_command": shlex.join(self.command), "slots": str(len(self._slots)),
                "slot_ctx": ",".join(sorted({str(s.get("n_ctx")) for s in self._slots}))}

    def start_trial(self, num_ctx: int, *, server: Mapping[str, Any] | None = None) -> float | None:
        """Start the server with this trial's context and settings unless it runs with them already.

        Raises:
            BackendError: the server refused these settings or did not come up (the trial fails).
        """
        server = dict(server or {})
        key = load_key(num_ctx, server)
        if key == self._key and self._process is not None and self._process.alive():
            return None
        self.stop()
        try:
            seconds = self._launch(launch_args(num_ctx, server))
        except ServerStartError as exc:
            raise BackendError(str(exc)) from exc
        smallest = min((int(s.get("n_ctx", 0)) for s in self._slots), default=0)
        if smallest < num_ctx:
            self.stop()
            raise BackendError(f"llama-server gave its slots {smallest} tokens of context, less than num_ctx "
                               f"{num_ctx}; command: {shlex.join(self.command)}")
        self._key = key
        return seconds

    def reset_peak_memory(self) -> None:
        if self._process is not None and self._process.pid is not None:
            reset_peak_rss(self._process.pid)

    def resources(self, settings: InferenceSettings) -> dict[str, float]:
        """The server process's peak resident memory during the trial, the KV cache of its whole context
        (``--ctx-size``: ``num_ctx`` times ``parallel``, in its cache types), the weights' file."""
        server, metadata = settings.server, gguf_metadata(self.model_path)
        found = {"kv_cache_mb": kv_cache_mib(metadata, settings.num_ctx * server.get("parallel", 1),
                                             type_k=server.get("cache_type_k", "f16"),
                                             type_v=server.get("cache_type_v", "f16")),
                 "memory_mb": peak_rss_mib(self._process.pid) if self._process and self._process.pid else None,
                 "model_mb": self.model_path.stat().st_size / MIB}
        return {name: value for name, value in found.items() if value is not None}

    def count_prompt_tokens(self, messages: list[Message]) -> int | None:
        """The prompt's tokens as the running server renders (its chat template) and tokenizes them."""
        if self._process is None or not self._process.alive():
            return None
        try:
            with httpx.Client(base_url=self._process.url, timeout=self.timeout_s, trust_env=False) as client:
                prompt = client.post("/apply-template", json={"messages": messages}).json()["prompt"]
                tokens = client.post("/tokenize", json={"content": prompt, "add_special": True,
                                                        "parse_special": True}).json()["tokens"]
        except (httpx.HTTPError, ValueError, KeyError) as exc:
            raise BackendError(f"llama-server could not count a prompt's tokens: {exc}") from exc
        return len(tokens)

    def request_body(self, messages: list[Message], settings: InferenceSettings, *,
                     schema: dict[str, Any]) -> dict[str, Any]:
        return self._running().request_body(messages, settings, schema=schema)

    def generate(self, messages: list[Message], settings: InferenceSettings, *,
                 schema: dict[str, Any]) -> Generation:
        try:
            return self._running().generate(messages, settings, schema=schema)
        except RequestFailed as exc:
            # A kept-alive connection to a server that died drops instead of being refused: still a dead server.
            if self._process is not None and not self._process.alive():
                raise BackendError(f"llama-server is gone: {exc}") from exc
            raise

    def _running(self) -> OpenAIBackend:
        if self._client is None:
            raise BackendError("no llama-server is running; call start_trial first")
        return self._client

    def close(self) -> None:
        self.stop()


def _version(binary: Path) -> str:
    try:
        result = subprocess.run([str(binary), "--version"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    lines = [line for line in (result.stdout + result.stderr).splitlines() if line.startswith("version:")]
    return lines[0].removeprefix("version:").strip() if lines else "unknown"
