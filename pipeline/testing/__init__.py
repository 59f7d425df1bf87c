"""Test doubles shipped with the package, like optuna.testing."""

from __future__ import annotations

from pipeline.testing.ollama_double import OllamaDouble

__all__ = ["OllamaDouble"]
