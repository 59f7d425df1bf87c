"""Errors raised by the pipeline.

The hierarchy is small and drawn once, here::

    PipelineError            anything the pipeline reports to the user (exit code 1)
    ├── InputError           bad input found before anything runs (exit code 2)
    │   ├── ConfigError      a study config file or CLI value
    │   ├── DataError        an experiment's schema or dataset, a prompt file
    │   └── ModelError       a model file or model name
    └── BackendError         the inference engine failed while the study ran

Every message is one line that names what is wrong, where, and what to do instead; the constructor folds any
line break a quoted third-party text brings in. Third-party errors are translated at the boundary
(``raise ConfigError(...) from exc``). URLs in messages go through :func:`redact_url`.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable, Sequence

__all__ = [
    "BackendError",
    "ConfigError",
    "DataError",
    "InputError",
    "ModelError",
    "PipelineError",
    "did_you_mean",
    "redact_url",
    "unknown_key",
]

_LINE_BREAKS = re.compile(r"\s*[\r\n\v\f\x1c-\x1e\x85\u2028\u2029]+\s*")


class PipelineError(Exception):
    """Base class of every error the pipeline reports; exit code 1."""

    exit_code = 1

    def __init__(self, message: object = "") -> None:
        # Messages quote third-party text (YAML and JSON parsers, OS errors, servers) that may span lines; the
        # command line promises one line per error, and str.splitlines() counts all of these as line breaks.
        super().__init__(_LINE_BREAKS.sub(" ", str(message)))


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


def unknown_key(keys: Iterable[object], known: Sequence[str]) -> str | None:
    """The message for the first of ``keys`` not in ``known`` — ``unknown key 'x'. Did you mean 'y'? Known keys:
    ...`` — or None when every key is known."""
    key = next((str(k) for k in keys if k not in known), None)
    if key is None:
        return None
    return f"unknown key {key!r}.{did_you_mean(key, known)} Known keys: {', '.join(known)}"


def redact_url(url: str) -> str:
    """``url`` fit for messages, logs and run tags: user info, query values and the fragment become ``***``.

    Works on the text, so it never raises, keeps IPv6 brackets and ports as written, and redacts URLs that do
    not parse too. A password holding an unescaped ``/`` still counts as user info: everything before the last
    ``@`` ahead of the query is redacted, unless the authority is empty (``sqlite:////home/a@b/optuna.db``).
    """
    scheme, sep, rest = url.partition("://")
    if not sep:
        scheme, rest = "", url
    query_at = min((i for i in (rest.find("?"), rest.find("#")) if i >= 0), default=len(rest))
    head, tail = rest[:query_at], rest[query_at:]
    if "@" in head and not (sep and head.startswith("/")):
        head = "***@" + head.rpartition("@")[2]
    query, fragment = "", ""
    if tail.startswith("?"):
        text, hash_mark, _ = tail[1:].partition("#")
        # Any value may be a secret (token, key, signature); the names stay, to show what was passed.
        pairs = (f"{p.partition('=')[0]}=***" if "=" in p else "***" if p else "" for p in text.split("&"))
        query, fragment = "?" + "&".join(pairs), "#***" if hash_mark else ""
    elif tail.startswith("#"):
        fragment = "#***"
    return f"{scheme}{sep}{head}{query}{fragment}"
