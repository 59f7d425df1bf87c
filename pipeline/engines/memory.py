"""What a setting holds in memory: the KV cache computed from the model's own metadata, and the measured peak
resident memory of the process that serves it.

The KV cache, as llama.cpp allocates it (``llama_kv_cache``; held against llama-server's own log line
``llama_kv_cache: size = ... MiB (... cells, ... layers, ...), K (f16): ..., V (f16): ...`` in
tests/test_memory.py): for every layer, one K and one V row per cell, each ``head_count_kv`` heads of
``key_length`` (``value_length``) values, stored in the cache type's bytes per value (a quantised type stores
blocks of 32 values: ``q8_0`` 34 bytes, ``q4_0`` 18). The cells are the whole context the engine was given,
rounded up to a multiple of 256: llama-server's ``--ctx-size`` (``num_ctx`` times ``--parallel``, which it
divides among its slots), llama.cpp's ``n_ctx`` in process, Ollama's ``num_ctx`` (times
``OLLAMA_NUM_PARALLEL``, which a client cannot see: taken as 1).

The peak resident memory of a process (``VmHWM`` in ``/proc/<pid>/status``) is reset at a trial's start by
writing ``5`` to ``/proc/<pid>/clear_refs`` (Linux ``proc(5)``), so it is the trial's own peak. Elsewhere than
Linux nothing is measured (None).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

__all__ = ["CACHE_TYPE_BYTES", "MIB", "context_cells", "kv_cache_mib", "peak_rss_mib", "reset_peak_rss"]

MIB = 1024 * 1024
# Bytes per stored value of each KV cache type (ggml's block sizes: 32 values a block).
CACHE_TYPE_BYTES: dict[str, float] = {"f32": 4.0, "f16": 2.0, "bf16": 2.0, "q8_0": 34 / 32, "q5_1": 24 / 32,
                                      "q5_0": 22 / 32, "q4_1": 20 / 32, "q4_0": 18 / 32, "iq4_nl": 18 / 32}
_CELL_PADDING = 256  # llama.cpp rounds a context up to a multiple of this many cells


def context_cells(n_ctx: int) -> int:
    """The KV cells llama.cpp allocates for a context of ``n_ctx`` tokens (all slots together)."""
    return math.ceil(n_ctx / _CELL_PADDING) * _CELL_PADDING


def kv_cache_mib(metadata: Mapping[str, Any], n_ctx: int, *, type_k: str = "f16",
                 type_v: str = "f16") -> float | None:
    """The KV cache of a context of ``n_ctx`` tokens (all slots together) in MiB, from the GGUF metadata
    (``<arch>.block_count``, ``.attention.head_count``, ``.attention.head_count_kv``, ``.embedding_length``,
    ``.attention.key_length`` and ``.value_length`` where the file has them); None when the metadata lacks what it
    takes or a cache type is unknown."""
    arch = metadata.get("general.architecture")
    try:
        layers = int(metadata[f"{arch}.block_count"])
        heads = int(metadata[f"{arch}.attention.head_count"])
        kv_heads = int(metadata.get(f"{arch}.attention.head_count_kv", heads))
        width = int(metadata[f"{arch}.embedding_length"]) // heads
        key = int(metadata.get(f"{arch}.attention.key_length", width))
        value = int(metadata.get(f"{arch}.attention.value_length", width))
        per_value = (key * CACHE_TYPE_BYTES[type_k] + value * CACHE_TYPE_BYTES[type_v])
    except (KeyError, ValueError, TypeError, ZeroDivisionError):
        return None
    return layers * context_cells(n_ctx) * kv_heads * per_value / MIB


def peak_rss_mib(pid: int) -> float | None:
    """The peak resident memory of process ``pid`` since it started or since :func:`reset_peak_rss`, in MiB;
    None where it cannot be read."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024  # kB
    except (OSError, ValueError, IndexError):
        return None
    return None


def reset_peak_rss(pid: int) -> None:
    """Start measuring the peak resident memory of process ``pid`` afresh (nothing where it cannot be done)."""
    try:
        Path(f"/proc/{pid}/clear_refs").write_text("5")
    except OSError:
        pass
