"""Reading the project's own files: YAML (study configs, manifests, routers), JSON and JSON Lines.

Every reader raises one-line errors that name the file (and the line) and the fix.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

from pipeline.errors import DataError, InputError

__all__ = ["UniqueKeyLoader", "json_kind", "jsonl_objects", "parse_json", "parse_yaml", "read_text", "shown"]


class UniqueKeyLoader(yaml.SafeLoader):
    """``yaml.safe_load`` that rejects a key written twice in one mapping; PyYAML would silently keep the last."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        first_seen: dict[Any, yaml.Node] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue  # `<<: *defaults` then an override is the point of a merge, not a repeat
            key = self.construct_object(key_node, deep=deep)
            try:
                first = first_seen.setdefault(key, key_node)
            except TypeError:
                continue  # an unhashable key: the base class reports it, with its line
            if first is not key_node:
                raise yaml.constructor.ConstructorError(
                    "while reading a mapping", node.start_mark,
                    f"key {key!r} is given twice, first on line {first.start_mark.line + 1}", key_node.start_mark)
        return super().construct_mapping(node, deep=deep)


def parse_yaml(path: Path, text: str, error: type[InputError], *, what: str, depth: str,
               unique_keys: bool = False) -> Any:
    """Parse YAML ``text`` read from ``path`` as plain data (safe loading only).

    Raises:
        error: the text is not YAML, holds a forbidden character, repeats a key (with ``unique_keys``), is nested
            too deeply (``depth`` says how deep it should be) or holds an integer too long to convert.
    """
    loader = UniqueKeyLoader if unique_keys else yaml.SafeLoader
    try:
        return yaml.load(text, Loader=loader)  # a SafeLoader: builds plain data, never objects
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = f":{mark.line + 1}" if mark is not None else ""
        raise error(f"{path}{line}: not valid YAML ({exc.problem or exc.context}); fix the syntax") from exc
    except yaml.reader.ReaderError as exc:
        line = text.count("\n", 0, exc.position) + 1
        raise error(f"{path}:{line}: not valid YAML (character {chr(exc.character)!r} is not allowed); "
                    "remove it") from exc
    except yaml.YAMLError as exc:
        raise error(f"{path}: not valid YAML ({exc}); fix the syntax") from exc
    except RecursionError as exc:
        raise error(f"{path}: nested too deeply to read; {depth}") from exc
    except ValueError as exc:  # Python's limit on the digits of an integer
        raise error(f"{path}: not a usable {what} ({exc.args[0].split(';')[0]}); fix the value") from exc


def read_text(path: Path, *, error: type[InputError] = DataError) -> tuple[bytes, str]:
    """A file's bytes and its UTF-8 text (a leading byte-order mark dropped): how every file of a job or a
    config is read.

    Raises:
        DataError (or ``error``): the file cannot be read or is not UTF-8.
    """
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise error(f"{path} cannot be read ({exc.strerror}); check that it is a readable file") from exc
    try:
        return raw, raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        raise error(f"{path}:{line}: not UTF-8 text (byte {raw[exc.start]:#04x} at offset {exc.start}); "
                    "save it as UTF-8") from exc


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON; write a number or null")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"{text} is too large for a number; write a smaller one")
    return value


def parse_json(text: str, where: str, *, whole_file: bool = False) -> Any:
    """Parse strict JSON (no NaN or Infinity, which Python's json accepts and JSON Schema cannot judge).

    Raises:
        DataError: one line naming ``where`` (with the line for a whole file) and what is wrong.
    """
    fix = "fix the file" if whole_file else "each line must be one JSON object"
    what = "not valid JSON" if whole_file else "not JSON"
    try:
        return json.loads(text, parse_constant=_reject_constant, parse_float=_finite_float)
    except json.JSONDecodeError as exc:
        line = f":{exc.lineno}" if whole_file else ""
        raise DataError(f"{where}{line}: {what} ({exc.msg} at column {exc.colno}); {fix}") from exc
    except ValueError as exc:  # a constant rejected above, or more integer digits than Python converts
        raise DataError(f"{where}: {what} ({exc.args[0].split(';')[0]}); {fix}") from exc
    except RecursionError as exc:
        raise DataError(f"{where}: {what} (nested too deeply); {fix}") from exc


def jsonl_objects(path: Path, shape: str) -> Iterator[tuple[str, dict[str, Any]]]:
    """The JSON objects of a JSON Lines file, each with where it is (``file:line``).

    Blank lines and lines whose first character is ``#`` (comments) are skipped. ``shape`` says what a line
    must hold, for the error message.

    Raises:
        DataError: the file cannot be read, is not UTF-8, or a line is not a JSON object.
    """
    text = read_text(path)[1]
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        where = f"{path}:{number}"
        item = parse_json(line, where)
        if not isinstance(item, dict):
            raise DataError(f"{where}: must be a JSON object with {shape}; got a JSON {json_kind(item)}")
        yield where, item


def json_kind(value: Any) -> str:
    """The JSON name of a Python value's type."""
    if isinstance(value, bool):
        return "boolean"
    return {list: "array", dict: "object", str: "string", type(None): "null"}.get(type(value), "number")


def shown(value: Any, limit: int = 80) -> str:
    """A value quoted back to the user on one line, cut after ``limit`` characters."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit]}..."
