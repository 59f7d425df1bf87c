"""Serving settings: a server's own settings (llama-server's flags) and the load a trial is measured under.

These settings are optional in a search space: left out, the server keeps its default and every request is sent
by one client. Their names are llama-server's flags (``--parallel`` is ``parallel``, ``--cache-type-k`` is
``cache_type_k``); :data:`SERVER_SETTINGS` also names each one's Ollama and vLLM counterpart (the table of
docs/backends.md is generated from it, tests/test_docs.py). Only the ``llama-server`` backend, which starts the
server itself, can apply them.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

__all__ = ["CONCURRENCY", "KV_CACHE_TYPES", "SERVER_SETTINGS", "ServerSetting", "combination_problem",
           "launch_args", "load_key", "server_of_launch"]

KV_CACHE_TYPES = ("f16", "q8_0", "q4_0")
# KV cache types llama.cpp stores unquantised: a V cache of any other type needs flash attention.
_PLAIN_CACHE = ("f16", "f32", "bf16")

# The load setting: how many closed-loop clients send a trial's requests at once.
CONCURRENCY = "concurrency"


@dataclass(frozen=True)
class ServerSetting:
    """One server setting: its type, the llama-server flag it sets, the values it takes, its counterparts."""

    kind: type
    flag: str
    allowed: Any  # the lowest value of a number, the choices of a text
    ollama: str
    vllm: str


SERVER_SETTINGS: dict[str, ServerSetting] = {
    "parallel": ServerSetting(int, "--parallel", 1, "OLLAMA_NUM_PARALLEL (server environment)", "--max-num-seqs"),
    "threads": ServerSetting(int, "--threads", 1, "num_thread (request option)", "none (GPU)"),
    "threads_batch": ServerSetting(int, "--threads-batch", 1, "none (num_thread covers both)", "none (GPU)"),
    "batch_size": ServerSetting(int, "--batch-size", 1, "num_batch (request option)",
                                "--max-num-batched-tokens"),
    "ubatch_size": ServerSetting(int, "--ubatch-size", 1, "none (fixed at num_batch)", "none"),
    "cache_type_k": ServerSetting(str, "--cache-type-k", KV_CACHE_TYPES, "OLLAMA_KV_CACHE_TYPE (server environment)",
                                  "--kv-cache-dtype"),
    "cache_type_v": ServerSetting(str, "--cache-type-v", KV_CACHE_TYPES,
                                  "OLLAMA_KV_CACHE_TYPE (one type for K and V)", "--kv-cache-dtype"),
    "flash_attn": ServerSetting(str, "--flash-attn", ("on", "off", "auto"),
                                "OLLAMA_FLASH_ATTENTION (server environment)", "--attention-backend"),
    "cache_reuse": ServerSetting(int, "--cache-reuse", 0, "none", "--enable-prefix-caching"),
}


def combination_problem(server: Mapping[str, Any]) -> str | None:
    """Why these server settings cannot be served as written, or None.

    A quantised V cache is stored only with flash attention (llama.cpp refuses it otherwise), and a micro-batch
    larger than the batch is cut down to it, so that setting would be scored as another one.
    """
    v_cache, flash = server.get("cache_type_v"), server.get("flash_attn", "auto")
    if v_cache is not None and v_cache not in _PLAIN_CACHE and flash == "off":
        return (f"a quantised V cache (cache_type_v {v_cache}) needs flash attention, and flash_attn is off; "
                "llama-server refuses that combination")
    batch, ubatch = server.get("batch_size", 2048), server.get("ubatch_size", 512)
    if ubatch > batch:
        return (f"ubatch_size {ubatch} is larger than batch_size {batch}; llama-server cuts it to {batch}, the "
                f"same setting as ubatch_size {batch}")
    return None


def load_key(num_ctx: int, server: Mapping[str, Any]) -> tuple[Any, ...]:
    """What a server must be (re)started or reloaded for: the context and the server's settings."""
    return (num_ctx, tuple(sorted(server.items())))


def launch_args(num_ctx: int, server: Mapping[str, Any]) -> list[str]:
    """llama-server's flags for a trial: ``num_ctx`` tokens for every slot, then each server setting given.

    llama-server divides ``--ctx-size`` among its ``--parallel`` slots, so the context asked for is ``num_ctx``
    times the slots: every request gets the ``num_ctx`` it was checked against.
    """
    args = ["--ctx-size", str(num_ctx * server.get("parallel", 1))]
    if "parallel" not in server:
        args += ["--parallel", "1"]  # llama-server's default (-1) picks a number of slots by itself
    for name, value in server.items():
        args += [SERVER_SETTINGS[name].flag, str(value)]
    return args


def server_of_launch(args: list[str]) -> tuple[int, dict[str, Any]]:
    """What a llama-server command line serves, as :func:`launch_args` would be given it: the context of every
    slot and the server settings its flags set (a flag given twice: the last one, as llama-server reads it).

    Raises:
        ValueError: no ``--ctx-size``, or a flag's value of the wrong type.
    """
    flags = {s.flag: (name, s.kind) for name, s in SERVER_SETTINGS.items()}
    server: dict[str, Any] = {}
    context = None
    for flag, value in itertools.pairwise(args):
        if flag == "--ctx-size":
            context = int(value)
        elif flag in flags:
            name, kind = flags[flag]
            server[name] = kind(value)
    if context is None:
        raise ValueError("the launch command has no --ctx-size")
    return context // server.get("parallel", 1), server
