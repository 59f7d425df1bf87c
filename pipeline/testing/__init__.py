"""Test doubles shipped with the package, like optuna.testing."""

from __future__ import annotations

from pipeline.testing.fake import FakeBackend, answers_by_request
from pipeline.testing.ollama_double import OllamaDouble

__all__ = ["FakeBackend", "OllamaDouble", "answers_by_request"]
