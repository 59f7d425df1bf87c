"""Inference backends: one small protocol, implemented by the embedded llama.cpp engine."""

from __future__ import annotations

from pipeline.backends.base import Backend, Generation, RequestFailed
from pipeline.backends.embedded import EmbeddedBackend, bundled_model_path

__all__ = ["Backend", "EmbeddedBackend", "Generation", "RequestFailed", "bundled_model_path"]
