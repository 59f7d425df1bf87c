"""Paths into an answer: JSON Pointers (RFC 6901), with ``*`` standing for any item of an array.

``/params/title`` names the ``title`` member of the ``params`` object; ``/line_items/*/price`` the ``price`` of
every item of ``line_items``. ``~1`` and ``~0`` escape ``/`` and ``~`` inside a member name, as in RFC 6901.
A path is kept as a tuple of its parts; ``ANY`` is the ``*`` part.
"""

from __future__ import annotations

from typing import Any

__all__ = ["ANY", "MISSING", "Path", "format_pointer", "matches", "parse_pointer", "resolve"]

Path = tuple[str, ...]
ANY = "*"


class _Missing:
    """The value at a path an answer does not have."""

    def __repr__(self) -> str:
        return "(missing)"


MISSING: Any = _Missing()


def parse_pointer(text: str) -> Path:
    """The parts of a pointer: ``""`` is the whole answer, anything else starts with ``/``.

    Raises:
        ValueError: the text does not start with ``/``, or has a ``~`` that is not ``~0`` or ``~1``.
    """
    if text == "":
        return ()
    if not text.startswith("/"):
        raise ValueError(f"a path starts with '/', e.g. /{text}")
    parts = []
    for raw in text[1:].split("/"):
        if "~" in raw.replace("~0", "").replace("~1", ""):
            raise ValueError("'~' must be written ~0 (and '/' inside a name ~1)")
        parts.append(raw.replace("~1", "/").replace("~0", "~"))
    return tuple(parts)


def format_pointer(path: Path) -> str:
    """The pointer text of a path (the inverse of :func:`parse_pointer`)."""
    return "".join("/" + part.replace("~", "~0").replace("/", "~1") for part in path)


def matches(pattern: Path, path: Path) -> bool:
    """Whether a concrete or pattern path fits ``pattern`` part by part (``*`` fits any array position)."""
    return len(pattern) == len(path) and all(p == q or p == ANY for p, q in zip(pattern, path))


def resolve(value: Any, path: Path) -> Any:
    """The value at ``path`` (no ``*``), or :data:`MISSING`."""
    for part in path:
        if isinstance(value, dict) and part in value:
            value = value[part]
        elif isinstance(value, list) and part.isdigit() and int(part) < len(value):
            value = value[int(part)]
        else:
            return MISSING
    return value
