"""An experiment: the JSON schema answers must follow and the labelled requests, with their fixed split.

An experiment folder holds ``schema.json`` (JSON Schema draft 2020-12) and ``dataset.jsonl``: one
``{"id", "split", "request", "expected"}`` object per line, every ``expected`` valid against the schema.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote

from jsonschema import Draft202012Validator
from jsonschema.exceptions import SchemaError, ValidationError
from jsonschema.protocols import Validator
from referencing import Registry
from referencing.exceptions import Unresolvable

from pipeline.errors import DataError

__all__ = ["Example", "Experiment", "first_violation", "has_action", "load_experiment", "parse_json", "read_text"]

SPLITS = ("dev", "holdout")
# An empty registry: a $ref that leaves the schema file is reported, never fetched (without a registry,
# jsonschema downloads http(s) references).
_LOCAL_REFS_ONLY: Registry = Registry()


@dataclass(frozen=True)
class Example:
    id: str
    split: str
    request: str
    expected: dict[str, Any]

    @property
    def action(self) -> str:
        return self.expected["action"]


@dataclass(frozen=True)
class Experiment:
    name: str
    folder: Path
    schema: dict[str, Any]
    examples: tuple[Example, ...]
    digest: str

    @property
    def dataset_path(self) -> Path:
        return self.folder / "dataset.jsonl"

    def validator(self) -> Draft202012Validator:
        return Draft202012Validator(self.schema, registry=_LOCAL_REFS_ONLY)

    def split(self, name: str, limit: int | None = None) -> list[Example]:
        """The examples of one split; with ``limit``, the first ``limit`` taken in turn from each action.

        Taking actions in turn keeps a small evaluation set balanced over the actions, and the choice is
        fixed by the file's order, so every trial of a study sees the same requests.
        """
        chosen = [e for e in self.examples if e.split == name]
        if limit is None or limit >= len(chosen):
            return chosen
        by_action: dict[str, list[Example]] = defaultdict(list)
        for example in chosen:
            by_action[example.action].append(example)
        queues = list(by_action.values())
        picked: list[Example] = []
        while len(picked) < limit:
            for queue in queues:
                if queue and len(picked) < limit:
                    picked.append(queue.pop(0))
        return picked


def load_experiment(folder: Path) -> Experiment:
    """Load and check an experiment folder.

    Raises:
        DataError: a file is missing or not UTF-8, the schema is invalid, or a dataset line is not JSON, lacks a
            field, repeats an id, names an unknown split, or expects an answer the schema rejects (``file:line``).
    """
    if not folder.is_dir():
        raise DataError(f"experiment folder {folder} not found; point 'experiment' at a folder with schema.json "
                        "and dataset.jsonl")
    schema_path = folder / "schema.json"
    if not schema_path.is_file():
        raise DataError(f"{schema_path} not found: an experiment folder needs a schema.json")
    schema_bytes, schema_text = read_text(schema_path)
    schema = parse_json(schema_text, str(schema_path), whole_file=True)
    try:
        Draft202012Validator.check_schema(schema)
    except SchemaError as exc:
        where = "/".join(str(p) for p in exc.path) or "(root)"
        raise DataError(f"{schema_path}: invalid JSON Schema at {where}: {exc.message}; "
                        "fix it against draft 2020-12") from exc
    except RecursionError as exc:
        raise DataError(f"{schema_path}: nested too deeply to check; simplify the schema") from exc
    external, dangling = _bad_refs(schema)
    if external is not None:
        # The embedded engine's grammar builder would fetch it too; a schema must be the whole contract.
        raise DataError(f"{schema_path}: $ref {_short(external)} points outside the file; copy the definition "
                        "under $defs and refer to it as #/$defs/<name>")
    if dangling is not None:
        # Found now rather than when the first model answer that reaches it is scored, in the middle of a study.
        raise DataError(f"{schema_path}: $ref {_short(dangling)} points at nothing in the file; fix the path or "
                        "add the definition under $defs")
    validator = Draft202012Validator(schema, registry=_LOCAL_REFS_ONLY)

    dataset_path = folder / "dataset.jsonl"
    if not dataset_path.is_file():
        raise DataError(f"{dataset_path} not found: an experiment folder needs a dataset.jsonl")
    raw, text = read_text(dataset_path)
    examples: list[Example] = []
    seen: set[str] = set()
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{dataset_path}:{number}"
        item = parse_json(line, where)
        if not isinstance(item, dict):
            raise DataError(f"{where}: must be a JSON object with id, split, request, expected; "
                            f"got a JSON {_json_kind(item)}")
        missing = [k for k in ("id", "split", "request", "expected") if k not in item]
        if missing:
            raise DataError(f"{where}: missing {', '.join(missing)}; each line needs id, split, request, expected")
        if not isinstance(item["id"], str) or item["id"] in seen:
            raise DataError(f"{where}: id {_short(item['id'])} must be a unique string")
        if not item["id"].strip():
            raise DataError(f"{where}: id is empty; give each line a unique id")
        if item["split"] not in SPLITS:
            raise DataError(f"{where}: split {_short(item['split'])} must be one of {', '.join(SPLITS)}")
        if not isinstance(item["request"], str) or not item["request"].strip():
            raise DataError(f"{where}: request must be a non-empty string")
        error = first_violation(validator, item["expected"], schema_path, where)
        if error is not None:
            raise DataError(f"{where}: expected answer violates {schema_path.name}: {error.message}; "
                            "fix the label or the schema")
        if not has_action(item["expected"]):
            # The action drives the balanced split and the few-shot router; the schema may not require it.
            raise DataError(f"{where}: expected answer must be a JSON object with an 'action' string; "
                            "fix the label, or make the schema require it")
        seen.add(item["id"])
        examples.append(Example(item["id"], item["split"], item["request"], item["expected"]))
    if not examples:
        raise DataError(f"{dataset_path}: no examples; add one JSON object per line")
    digest = hashlib.sha256(schema_bytes + raw).hexdigest()
    return Experiment(folder.name, folder, schema, tuple(examples), digest)


def read_text(path: Path) -> tuple[bytes, str]:
    """A file's bytes and its UTF-8 text (a leading byte-order mark dropped).

    Raises:
        DataError: the file cannot be read or is not UTF-8.
    """
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise DataError(f"{path} cannot be read ({exc.strerror}); check that it is a readable file") from exc
    try:
        return raw, raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        raise DataError(f"{path}:{line}: not UTF-8 text (byte {raw[exc.start]:#04x} at offset {exc.start}); "
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


def first_violation(validator: Validator, instance: Any, schema_path: Path, where: str) -> ValidationError | None:
    """The first way ``instance`` breaks the schema (errors ordered by where they are), or None.

    Raises:
        DataError: the schema has a ``$ref`` that cannot be resolved, or the instance is nested too deeply.
    """
    try:
        return min(validator.iter_errors(instance), key=lambda e: e.path, default=None)
    except Unresolvable as exc:
        raise DataError(f"{schema_path}: cannot resolve a $ref ({_short(str(exc))}) checking {where}; define it "
                        "under $defs: other files and URLs are not fetched") from exc
    except RecursionError as exc:
        raise DataError(f"{where}: nested too deeply to check against {schema_path.name}; simplify it") from exc


def has_action(answer: Any) -> bool:
    """Whether an answer is a JSON object with an ``action`` string, as the split and the router need."""
    return isinstance(answer, dict) and isinstance(answer.get("action"), str)


def _bad_refs(schema: Any) -> tuple[str | None, str | None]:
    """The first ``$ref`` that leaves the file, and the first ``#/...`` pointer that finds nothing (or Nones)."""
    refs: list[str] = []
    nested_id = False
    pending = [(schema, True)]  # a loop, not recursion: the schema may be nested deeper than Python's stack
    while pending:
        node, root = pending.pop()
        if isinstance(node, dict):
            nested_id = nested_id or (not root and isinstance(node.get("$id"), str))
            for key, value in node.items():
                if key in ("$ref", "$dynamicRef") and isinstance(value, str):
                    refs.append(value)
                pending.append((value, False))
        elif isinstance(node, list):
            pending.extend((item, False) for item in node)
    external = next((r for r in refs if not r.startswith("#")), None)
    # A nested $id starts a new base for its pointers; leave those to the validator.
    pointers = [] if nested_id else [r for r in refs if r == "#" or r.startswith("#/")]
    return external, next((r for r in pointers if not _points_at_something(schema, r)), None)


def _points_at_something(schema: Any, ref: str) -> bool:
    node = schema
    for part in ref[2:].split("/") if ref != "#" else []:
        part = unquote(part).replace("~1", "/").replace("~0", "~")
        if isinstance(node, dict) and part in node:
            node = node[part]
        elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        else:
            return False
    return True


def _json_kind(value: Any) -> str:
    return {list: "array", str: "string", bool: "boolean", type(None): "null"}.get(type(value), "number")


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else f"{text[:80]}..."
