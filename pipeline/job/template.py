"""The input template: how a dataset line's fields become the user message of a request.

A template is text with ``{field}`` placeholders (``"Email from {sender}: {body}"``); ``{{`` and ``}}`` are
literal braces. A string field is inserted as it is, any other JSON value as compact JSON text (a list of
tools, a nested record).
"""

from __future__ import annotations

import json
import string
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from pipeline.errors import DataError
from pipeline.job.files import shown

__all__ = ["InputTemplate"]


@dataclass(frozen=True)
class InputTemplate:
    text: str
    fields: tuple[str, ...]

    @classmethod
    def parse(cls, text: Any, where: str) -> InputTemplate:
        """Check a template and list its fields.

        Raises:
            DataError: not a non-empty string, a brace that is not closed, or a placeholder that is not a plain
                field name (``{}``, ``{0}``, ``{a.b}``, ``{a[0]}``, ``{a!r}``, ``{a:>5}``).
        """
        if not isinstance(text, str) or not text.strip():
            raise DataError(f"{where}: 'input' must be a template such as \"{{request}}\" or \"Email from "
                            f"{{sender}}: {{body}}\", got {shown(text)}")
        fields: list[str] = []
        try:
            parsed = list(string.Formatter().parse(text))
        except ValueError as exc:
            raise DataError(f"{where}: input template {shown(text)}: {exc}; write {{field}} for a field and "
                            "{{ or }} for a literal brace") from exc
        for _, name, spec, conversion in parsed:
            if name is None:
                continue
            if not name.isidentifier() or spec or conversion:
                written = "{" + name + (f"!{conversion}" if conversion else "") + (f":{spec}" if spec else "") + "}"
                raise DataError(f"{where}: input template placeholder {written!r} must be a plain field name, e.g. "
                                "{body}; write {{ or }} for a literal brace")
            if name not in fields:
                fields.append(name)
        return cls(text, tuple(fields))

    def missing(self, line: Mapping[str, Any]) -> list[str]:
        """The template's fields that ``line`` does not have."""
        return [name for name in self.fields if name not in line]

    def render(self, line: Mapping[str, Any]) -> str:
        """The user message of one line (every field present: see :meth:`missing`)."""
        return self.text.format_map({name: _text(line[name]) for name in self.fields})


def _text(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
