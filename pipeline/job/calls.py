"""A function-calling set as a job: each line a question, the functions it offers and, for the one call that
answers it, every argument's acceptable values.

The format read (one JSON object per line): ``question`` (the user's text, or chat turns whose last user message
is the request), ``function`` (the offered functions: ``name``, ``description``, ``parameters`` with JSON-Schema-like
``type`` names: ``dict``, ``float``, ``tuple``, ``any``, ``integer``, ``string``, ``boolean``, ``array``), and a
ground truth (on the line, or by ``id`` in a second file): ``[{function name: {argument: [acceptable values]}}]``,
where ``""`` among the values means the argument may be left out.

Each line becomes a dataset line of the job (:mod:`pipeline.job.experiment`): the answer is
``{"name": <function>, "arguments": {...}}``, its schema the line's own (``tools``: one shape per offered
function), ``expected`` the first acceptable value of each argument, ``accept`` the others as alternatives and
the arguments that may be left out as optional (a required one then no longer required by the line's schema, as
the ground truth accepts an answer without it). A line this cannot express (several calls, no call, an argument
the function does not have) is skipped, with the reason counted.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from pipeline.errors import DataError
from pipeline.job.schemas import check_schema

__all__ = ["Converted", "answer_schema", "convert_calls", "parameters_schema", "router_keywords"]

# The format's type names and JSON Schema's (None: any value).
_TYPES: dict[str, str | None] = {"dict": "object", "object": "object", "float": "number", "number": "number",
                                 "integer": "integer", "int": "integer", "string": "string", "str": "string",
                                 "boolean": "boolean", "bool": "boolean", "array": "array", "list": "array",
                                 "tuple": "array", "any": None}
_KEPT = ("description", "enum", "default", "minimum", "maximum", "pattern", "format")


def parameters_schema(spec: Any, where: str) -> dict[str, Any]:
    """A function's parameter description as JSON Schema (draft 2020-12), recursively.

    Raises:
        DataError: a type name the format does not have (naming ``where``).
    """
    if not isinstance(spec, dict):
        raise DataError(f"{where}: a parameter description must be an object, got {type(spec).__name__}")
    out: dict[str, Any] = {k: spec[k] for k in _KEPT if k in spec}
    kind = spec.get("type")
    if kind is not None:
        if kind not in _TYPES:
            raise DataError(f"{where}: unknown type {kind!r}; the format's types are {', '.join(_TYPES)}")
        if _TYPES[kind] is not None:
            out["type"] = _TYPES[kind]
    if "properties" in spec:
        out["properties"] = {name: parameters_schema(sub, f"{where}.{name}")
                             for name, sub in spec["properties"].items()}
        out["additionalProperties"] = False
    if spec.get("required"):
        out["required"] = list(spec["required"])
    if "items" in spec:
        out["items"] = parameters_schema(spec["items"], f"{where}[]")
    return out


def answer_schema(functions: list[dict[str, Any]], where: str) -> dict[str, Any]:
    """The schema of an answer calling one of ``functions``: ``{"name": <one of them>, "arguments": {...}}``."""
    shapes = [{"type": "object", "required": ["name", "arguments"], "additionalProperties": False,
               "properties": {"name": {"const": f["name"]},
                              "arguments": parameters_schema(f.get("parameters", {"type": "dict"}),
                                                             f"{where} ({f['name']})")}}
              for f in functions]
    if len(shapes) == 1:
        return {"$schema": "https://json-schema.org/draft/2020-12/schema", **shapes[0]}
    return {"$schema": "https://json-schema.org/draft/2020-12/schema", "oneOf": shapes}


@dataclass
class Converted:
    """The dataset lines of a converted set, and the lines skipped, counted by why."""

    lines: list[dict[str, Any]] = field(default_factory=list)
    skipped: Counter[str] = field(default_factory=Counter)
    may_be_left_out: int = 0            # arguments whose acceptable values hold "" (optional in the job)
    with_alternatives: int = 0          # arguments with more than one acceptable value
    arguments: int = 0
    dropped: int = 0                    # acceptable values the function's own parameters do not allow
    relaxed: int = 0                    # required arguments the ground truth lets be left out


def convert_calls(questions: list[tuple[str, dict[str, Any]]], answers: dict[str, Any] | None, *,
                  holdout: float) -> Converted:
    """Convert the lines (each with where it is, ``file:line``), and the ground truth by id when it is not on
    each line; a share ``holdout`` of them goes to the held-out split, chosen by a hash of each id (the same ids,
    the same split, in any order).

    Raises:
        DataError: a line without functions or a question, or a type name the format does not have.
    """
    out = Converted()
    for index, (where, item) in enumerate(questions):
        ident = str(item.get("id", f"q{index + 1:04d}"))
        truth = item.get("ground_truth", (answers or {}).get(ident))
        functions = item.get("function")
        if isinstance(functions, dict):
            functions = [functions]
        if not isinstance(functions, list) or not functions:
            raise DataError(f"{where}: no 'function' list of offered functions; each line needs question, function "
                            "and ground_truth (or an id the answers file has)")
        unnamed = next((f for f in functions if not isinstance(f, dict) or not isinstance(f.get("name"), str)), None)
        if unnamed is not None:
            raise DataError(f"{where}: every offered function is an object with a 'name' (and 'parameters'), got "
                            f"{json.dumps(unnamed)[:80]}")
        request = _question(item.get("question"), where)
        if truth is None:
            out.skipped["no ground truth"] += 1
            continue
        if not isinstance(truth, list) or len(truth) != 1 or not isinstance(truth[0], dict) or len(truth[0]) != 1:
            out.skipped["not exactly one call"] += 1
            continue
        (name, accepted), = truth[0].items()
        offered = {f.get("name"): f for f in functions}
        if name not in offered or not isinstance(accepted, dict):
            out.skipped["a call of a function not offered"] += 1
            continue
        parameters = offered[name].get("parameters") or {}
        known, required = parameters.get("properties") or {}, set(parameters.get("required") or [])
        if any(arg not in known for arg in accepted):
            out.skipped["an argument the function does not have"] += 1
            continue
        arguments, alternatives, optional, relaxed = {}, {}, [], set()
        for arg, values in accepted.items():
            values = values if isinstance(values, list) else [values]
            given = _unique([v for v in values if v != ""])
            out.arguments += 1
            out.with_alternatives += len(given) > 1
            if not given:  # only "": the answer should leave it out; an answer that gives it is judged wrong
                continue
            arguments[arg] = given[0]
            pointer = "/arguments/" + arg.replace("~", "~0").replace("/", "~1")
            if len(given) > 1:
                alternatives[pointer] = given[1:]
            if "" in values:  # may be left out: optional, and no longer required by this line's schema
                optional.append(pointer)
                out.may_be_left_out += 1
                relaxed |= {arg} & required
        expected = {"name": name, "arguments": arguments}
        if relaxed:
            out.relaxed += len(relaxed)
            functions = [_without_required(f, relaxed) if f.get("name") == name else f for f in functions]
        schema = check_schema(answer_schema(functions, where), where)
        if schema.first_violation(expected, where) is not None:
            out.skipped["a first acceptable value the function's own parameters do not allow"] += 1
            continue
        for pointer, others in list(alternatives.items()):
            arg = pointer.removeprefix("/arguments/").replace("~1", "/").replace("~0", "~")
            allowed = [v for v in others if schema.first_violation(
                {"name": name, "arguments": {**arguments, arg: v}}, where) is None]
            out.dropped += len(others) - len(allowed)
            if allowed:
                alternatives[pointer] = allowed
            else:
                del alternatives[pointer]
        line: dict[str, Any] = {"id": ident, "split": "dev", "request": request,
                                "functions": json.dumps(functions, ensure_ascii=False),
                                "tools": schema.document, "expected": expected}
        accept = {k: v for k, v in (("alternatives", alternatives), ("optional", optional)) if v}
        if accept:
            line["accept"] = accept
        out.lines.append(line)
    held = round(len(out.lines) * holdout)
    by_hash = sorted(out.lines, key=lambda line: hashlib.sha256(line["id"].encode()).hexdigest())
    for line in by_hash[:held]:
        line["split"] = "holdout"
    return out


def router_keywords(names: list[str]) -> dict[str, list[str]]:
    """Words that predict which function a request calls: the words of each function's name."""
    return {name: _unique([w.lower() for w in re.split(r"[_.\-\s]+|(?<=[a-z])(?=[A-Z])", name) if len(w) > 2])
            or [name.lower()] for name in names}


def _without_required(function: dict[str, Any], names: set[str]) -> dict[str, Any]:
    """The function with ``names`` no longer required (the ground truth accepts an answer without them)."""
    parameters = dict(function.get("parameters") or {})
    parameters["required"] = [r for r in parameters.get("required") or [] if r not in names]
    return {**function, "parameters": parameters}


def _question(value: Any, where: str) -> str:
    """The request: the text, or the last user message of chat turns (a list, or a list of lists)."""
    if isinstance(value, str) and value.strip():
        return value.strip()
    turns = value
    while isinstance(turns, list) and turns and isinstance(turns[-1], list):
        turns = turns[-1]
    if isinstance(turns, list):
        users = [t.get("content") for t in turns if isinstance(t, dict) and t.get("role") == "user"]
        if users and isinstance(users[-1], str) and users[-1].strip():
            return users[-1].strip()
    raise DataError(f"{where}: no 'question' (the user's text, or chat turns with a user message)")


def _unique(values: list[Any]) -> list[Any]:
    """The values once each, in order (as JSON: ``1`` and ``true`` stay apart)."""
    return list({json.dumps(v, sort_keys=True): v for v in reversed(values)}.values())[::-1]
