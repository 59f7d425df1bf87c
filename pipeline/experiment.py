"""An experiment: the JSON schema answers must follow and the labelled requests, with their fixed split.

An experiment folder holds ``schema.json`` (JSON Schema draft 2020-12) and ``dataset.jsonl``: one
``{"id", "split", "request", "expected"}`` object per line, every ``expected`` valid against the schema.
"""

from __future__ import annotations

import hashlib
import json
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from jsonschema import Draft202012Validator
from jsonschema.exceptions import SchemaError

from pipeline.errors import DataError

__all__ = ["Example", "Experiment", "load_experiment"]

SPLITS = ("dev", "holdout")


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
        return Draft202012Validator(self.schema)

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
        DataError: a file is missing, the schema is invalid, or a dataset line is not JSON, lacks a field,
            repeats an id, names an unknown split, or expects an answer the schema rejects (``file:line``).
    """
    schema_path = folder / "schema.json"
    schema = _read_json(schema_path)
    try:
        Draft202012Validator.check_schema(schema)
    except SchemaError as exc:
        where = "/".join(str(p) for p in exc.path) or "(root)"
        raise DataError(f"{schema_path}: invalid JSON Schema at {where}: {exc.message}; "
                        "fix it against draft 2020-12") from exc
    validator = Draft202012Validator(schema)

    dataset_path = folder / "dataset.jsonl"
    if not dataset_path.is_file():
        raise DataError(f"{dataset_path} not found: an experiment folder needs a dataset.jsonl")
    raw = dataset_path.read_bytes()
    examples: list[Example] = []
    seen: set[str] = set()
    try:
        lines = raw.decode("utf-8").splitlines()
    except UnicodeDecodeError as exc:
        raise DataError(f"{dataset_path}: not UTF-8 text ({exc.reason}); save it as UTF-8") from exc
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        where = f"{dataset_path}:{number}"
        try:
            item = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(f"{where}: not JSON ({exc.msg}); each line must be one JSON object") from exc
        if not isinstance(item, dict):
            raise DataError(f"{where}: must be a JSON object with id, split, request, expected")
        missing = [k for k in ("id", "split", "request", "expected") if k not in item]
        if missing:
            raise DataError(f"{where}: missing {', '.join(missing)}; each line needs id, split, request, expected")
        if not isinstance(item["id"], str) or item["id"] in seen:
            raise DataError(f"{where}: id {item['id']!r} must be a unique string")
        if item["split"] not in SPLITS:
            raise DataError(f"{where}: split {item['split']!r} must be one of {', '.join(SPLITS)}")
        if not isinstance(item["request"], str) or not item["request"].strip():
            raise DataError(f"{where}: request must be a non-empty string")
        error = next(iter(sorted(validator.iter_errors(item["expected"]), key=lambda e: e.path)), None)
        if error is not None:
            raise DataError(f"{where}: expected answer violates {schema_path.name}: {error.message}; "
                            "fix the label or the schema")
        seen.add(item["id"])
        examples.append(Example(item["id"], item["split"], item["request"], item["expected"]))
    if not examples:
        raise DataError(f"{dataset_path}: no examples; add one JSON object per line")
    digest = hashlib.sha256(schema_path.read_bytes() + raw).hexdigest()
    return Experiment(folder.name, folder, schema, tuple(examples), digest)


def _read_json(path: Path) -> Any:
    if not path.is_file():
        raise DataError(f"{path} not found: an experiment folder needs a schema.json")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        line = f":{exc.lineno}" if isinstance(exc, json.JSONDecodeError) else ""
        raise DataError(f"{path}{line}: not valid JSON ({exc}); fix the file") from exc
