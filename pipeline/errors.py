"""Errors raised by the pipeline.

The hierarchy is small and drawn once, here::

    PipelineError            anything the pipeline reports to the user (exit code 1)
    ├── InputError           bad input found before anything runs (exit code 2)
    │   ├── ConfigError      a study config file or CLI value
    │   ├── DataError        an experiment's schema or dataset, a prompt file
    │   └── ModelError       a model file or model name
    └── BackendError         the inference engine failed while the study ran

Every message is one line that names what is wrong, where, and what to do instead.
Third-party errors are translated at the boundary (``raise ConfigError(...) from exc``).
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable

__all__ = [
    "BackendError",
    "ConfigError",
    "DataError",
    "InputError",
    "ModelError",
    "PipelineError",
    "did_you_mean",
]


class PipelineError(Exception):
    """Base class of every error the pipeline reports; exit code 1."""

    exit_code = 1


class InputError(PipelineError):
    """Bad input detected before anything is recorded; exit code 2."""

    exit_code = 2


class ConfigError(InputError):
    """A study config value (file or command line) is invalid."""


class DataError(InputError):
    """An experiment schema, dataset line or prompt file is invalid."""


class ModelError(InputError):
    """A model file cannot be read or a model name is unknown."""


class BackendError(PipelineError):
    """The inference engine failed during a study."""


def did_you_mean(name: str, known: Iterable[str]) -> str:
    """Return ``" Did you mean 'x'?"`` for the closest known name, or ``""``."""
    close = difflib.get_close_matches(name, list(known), n=1)
    return f" Did you mean {close[0]!r}?" if close else ""
