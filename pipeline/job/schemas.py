"""JSON Schemas that answers must follow: checking one, validating against it, and what it allows at a path.

Schemas are JSON Schema draft 2020-12. A schema must be the whole contract: a ``$ref`` that leaves it is
refused (never fetched), and a ``#/...`` reference that finds nothing is reported when the schema is loaded,
not when the first answer that reaches it is scored in the middle of a study.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any
from urllib.parse import unquote

from jsonschema import Draft202012Validator
from jsonschema.exceptions import SchemaError, ValidationError
from referencing import Registry
from referencing.exceptions import Unresolvable

from pipeline.errors import DataError
from pipeline.job.files import json_kind, shown
from pipeline.job.pointers import ANY, MISSING, Path, parse_pointer, resolve

__all__ = ["AnswerSchema", "check_schema", "default_at", "required_at", "types_at"]

# An empty registry: a $ref that leaves the schema is reported, never fetched (without a registry,
# jsonschema downloads http(s) references).
_LOCAL_REFS_ONLY: Registry = Registry()
JSON_TYPES = frozenset({"object", "array", "string", "number", "integer", "boolean", "null"})


@dataclass(frozen=True)
class AnswerSchema:
    """A checked schema, with where it came from (a file, or a dataset line) and a short digest."""

    document: dict[str, Any] | bool
    source: str
    digest: str = field(default="", compare=False)

    @cached_property
    def validator(self) -> Draft202012Validator:
        # Formats (date, email, uuid...) are checked too, as the engine's grammar enforces the common ones.
        return Draft202012Validator(self.document, registry=_LOCAL_REFS_ONLY,
                                    format_checker=Draft202012Validator.FORMAT_CHECKER)

    def first_violation(self, instance: Any, where: str) -> ValidationError | None:
        """The first way ``instance`` breaks the schema (errors ordered by where they are), or None.

        Raises:
            DataError: the instance is nested too deeply to check, or a ``$ref`` cannot be resolved.
        """
        try:
            return min(self.validator.iter_errors(instance), key=lambda e: e.path, default=None)
        except Unresolvable as exc:
            raise DataError(f"{self.source}: cannot resolve a $ref ({shown(str(exc))}) checking {where}; define "
                            "it under $defs: other files and URLs are not fetched") from exc
        except RecursionError as exc:
            raise DataError(f"{where}: nested too deeply to check against {self.source}; simplify it") from exc

    def violation_message(self, instance: Any) -> str:
        """The first violation's message (at most 200 characters), or ``""`` for a valid instance."""
        errors = sorted(self.validator.iter_errors(instance), key=lambda e: e.path)
        return errors[0].message[:200] if errors else ""


def check_schema(document: Any, source: str) -> AnswerSchema:
    """Check a schema document; ``source`` names where it came from in messages.

    Raises:
        DataError: not an object (or boolean), invalid against draft 2020-12, nested too deeply, a ``$ref``
            outside the document, or a ``#/...`` reference that points at nothing.
    """
    if not isinstance(document, (dict, bool)):
        raise DataError(f"{source}: a JSON Schema must be an object, got {shown(document)}; write "
                        '{"type": "object", ...}')
    try:
        Draft202012Validator.check_schema(document)
    except SchemaError as exc:
        where = "/".join(str(p) for p in exc.path) or "(root)"
        raise DataError(f"{source}: invalid JSON Schema at {where}: {exc.message}; "
                        "fix it against draft 2020-12") from exc
    except RecursionError as exc:
        raise DataError(f"{source}: nested too deeply to check; simplify the schema") from exc
    external, dangling = _bad_refs(document)
    if external is not None:
        # The embedded engine's grammar builder would fetch it too; a schema must be the whole contract.
        raise DataError(f"{source}: $ref {shown(external)} points outside the schema; copy the definition "
                        "under $defs and refer to it as #/$defs/<name>")
    if dangling is not None:
        raise DataError(f"{source}: $ref {shown(dangling)} points at nothing in the schema; fix the path or "
                        "add the definition under $defs")
    digest = hashlib.sha256(json.dumps(document, sort_keys=True).encode()).hexdigest()
    return AnswerSchema(document, source, digest)


def _bad_refs(schema: Any) -> tuple[str | None, str | None]:
    """The first ``$ref`` that leaves the schema, and the first ``#/...`` pointer that finds nothing (or Nones)."""
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
    return external, next((r for r in pointers if _follow_ref(schema, r) is None), None)


def _follow_ref(schema: Any, ref: str) -> Any:
    """What a ``#...`` reference points at in the schema, or None."""
    try:
        path = tuple(unquote(part) for part in parse_pointer(ref[1:]))
    except ValueError:
        return None
    found = resolve(schema, path)
    return None if found is MISSING else found


class _Anything:
    """A place in a schema that allows any value (``true``, ``{}``, an open ``additionalProperties``)."""


_ANYTHING = _Anything()


def types_at(schema: dict[str, Any] | bool, path: Path) -> frozenset[str] | None:
    """The JSON types the schema allows at ``path`` (``*`` for any array item).

    Returns:
        The set of types (``integer`` implies ``number`` is listed too); None when the schema does not say
        (anything may be there); an empty set when the path reaches nothing the schema allows.
    """
    nodes: list[Any] = [schema]
    for part in path:
        children: list[Any] = []
        for node in _expand(nodes, schema):
            if node is _ANYTHING:
                return None
            children.extend(_child(node, part))
        nodes = children
    types: set[str] = set()
    for node in _expand(nodes, schema):
        if node is _ANYTHING:
            return None
        found = _types_of(node)
        if found is None:
            return None
        types |= found
    return frozenset(types)


def required_at(schema: dict[str, Any] | bool, path: Path) -> bool:
    """Whether the schema requires a value at ``path``: an object schema that may hold it (in any branch) lists
    its last part in ``required``. The whole answer (``()``) is always required."""
    if not path:
        return True
    return any(isinstance(node, dict) and path[-1] in (node.get("required") or [])
               for node in _expand(_nodes_at(schema, path[:-1]), schema))


def default_at(schema: dict[str, Any] | bool, path: Path) -> Any:
    """The ``default`` the schema declares for the value at ``path`` (the first one found), or ``MISSING``."""
    nodes = _nodes_at(schema, path)
    for node in [*nodes, *_expand(nodes, schema)]:
        if isinstance(node, dict) and "default" in node:
            return node["default"]
    return MISSING


def _nodes_at(schema: dict[str, Any] | bool, path: Path) -> list[Any]:
    """The subschemas that may describe the value at ``path``, before their branches are opened."""
    nodes: list[Any] = [schema]
    for part in path:
        nodes = [child for node in _expand(nodes, schema) if node is not _ANYTHING for child in _child(node, part)]
    return nodes


def _expand(nodes: list[Any], root: Any, depth: int = 0) -> list[Any]:
    """Plain subschemas: references followed, ``allOf``/``anyOf``/``oneOf``/``then``/``else`` branches opened."""
    out: list[Any] = []
    for node in nodes:
        if node is True:
            out.append(_ANYTHING)
            continue
        if not isinstance(node, dict) or node is _ANYTHING:
            if node is _ANYTHING:
                out.append(node)
            continue
        branches = [b for key in ("allOf", "anyOf", "oneOf") for b in node.get(key, [])]
        branches += [node[key] for key in ("then", "else") if key in node]
        if isinstance(node.get("$ref"), str) and depth < 32:
            target = _follow_ref(root, node["$ref"])
            if target is not None:
                branches.append(target)
        own = {k: v for k, v in node.items() if k not in ("allOf", "anyOf", "oneOf", "then", "else", "$ref", "if",
                                                          "$defs", "definitions", "$schema", "$id", "$comment",
                                                          "title", "description", "examples", "default")}
        if own or not branches:
            out.append(node if own else _ANYTHING)
        out.extend(_expand(branches, root, depth + 1))
    return out


def _child(node: dict[str, Any], part: str) -> list[Any]:
    """The subschemas that may hold ``part`` of a value this node describes."""
    types = _types_of(node)
    children: list[Any] = []
    if (types is None or "array" in types) and (part == ANY or part.isdigit()):
        prefix = node.get("prefixItems", [])
        if part.isdigit() and int(part) < len(prefix):
            children.append(prefix[int(part)])
        else:
            children.extend(prefix if part == ANY else [])
            items = node.get("items", True)
            if items is not False:
                children.append(items)
    if (types is None or "object" in types) and part != ANY:
        properties = node.get("properties", {})
        matched = [s for pattern, s in node.get("patternProperties", {}).items() if re.search(pattern, part)]
        if part in properties:
            children.append(properties[part])
        elif matched:
            children.extend(matched)
        elif node.get("additionalProperties", True) is not False:
            children.append(node.get("additionalProperties", True))
    return children


def _types_of(node: dict[str, Any]) -> set[str] | None:
    if "const" in node:
        return _value_types([node["const"]])
    if "enum" in node and isinstance(node["enum"], list):
        return _value_types(node["enum"])
    declared = node.get("type")
    if isinstance(declared, str):
        declared = [declared]
    if isinstance(declared, list):
        types = {t for t in declared if t in JSON_TYPES}
        return types | ({"number"} if "integer" in types else set())
    if "properties" in node or "required" in node or "additionalProperties" in node:
        return {"object"}
    if "items" in node or "prefixItems" in node:
        return {"array"}
    return None


def _value_types(values: list[Any]) -> set[str]:
    types = {json_kind(v) for v in values}
    if any(isinstance(v, int) and not isinstance(v, bool) for v in values):
        types.add("integer")
    return types
