"""Find the fastest way to serve a local LLM for a structured-output job without losing accuracy."""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__"]
