"""An experiment: a structured-output job described by files, loaded and checked once.

An experiment folder holds a manifest, ``experiment.yaml``, which names the rest:

- ``schema``: the JSON Schema (draft 2020-12) every answer must follow, or ``schema_field``: the dataset field
  that holds each request's own schema (tool calling: every request offers other tools); a line without that
  field falls back to ``schema``;
- ``dataset`` (default ``dataset.jsonl``): one labelled request per line, ``{"id", "split", "expected", ...}``
  plus the fields the input template uses; ``split`` is ``dev`` (studies) or ``holdout`` (promotion); an optional
  ``accept`` says what else the expected answer accepts, by JSON Pointer into it: ``alternatives`` (path: other
  acceptable values), ``optional`` (paths the answer may leave out), ``defaults`` (path: the value an absent field
  means) — kept beside ``expected``, so ``expected`` stays one real answer (a few-shot example, schema-valid) and
  no reserved key inside an answer can collide with a real member;
- ``input`` (default ``"{request}"``): the user message, a template over a line's fields (:mod:`pipeline.job.template`);
- ``label``: an optional path (JSON Pointer) into the answer whose value names the request's class: it balances
  the evaluated requests, routes few-shot examples (``by_label``) and gives ``label_accuracy``;
- ``scoring``: how each answer path is compared (:mod:`pipeline.job.rules`): ``default`` and ``fields``; and what
  every line's expected answer accepts besides itself: ``optional`` (paths, ``*`` for any item, an answer may leave
  out) and ``omit_defaults`` (true: a field the schema does not require and gives a ``default`` may be left out,
  and then means that default);
- ``warmup``: the fields of an untimed request sent after every model load (default: the first few-shot example);
- ``traffic``: an optional file of the requests in arrival order, repeats and paraphrases included
  (:mod:`pipeline.job.traffic`; default ``traffic.jsonl`` where the folder has one): where there is one, a split's
  requests are its traffic unless the study's config says ``evaluation.traffic: false``;
- ``cache``: how a response cache may serve this job: ``never`` lists labels whose answers are never kept (answers
  that must be made afresh each time); a cache reads the label an answer gives at the ``label`` path;
- ``description``: free text.

Everything is checked here, before anything is recorded: unknown keys, paths that match nothing in the schema,
rules that cannot apply to the schema's type there, and every dataset line (``file:line``).
"""

from __future__ import annotations

import hashlib
import json
from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from functools import cached_property
from pathlib import Path as FilePath
from typing import Any

from pipeline.errors import DataError, did_you_mean, unknown_key
from pipeline.job.files import json_kind, jsonl_objects, parse_json, parse_yaml, read_text, shown
from pipeline.job.pointers import ANY, MISSING, Path, format_pointer, matches, parse_pointer, resolve
from pipeline.job.rules import Ignore, RuleSet, Text, Unordered, make_rule
from pipeline.job.schemas import AnswerSchema, check_schema, default_at, required_at, types_at
from pipeline.job.scoring import NOTHING_ELSE, Accepts, Scorer
from pipeline.job.template import InputTemplate
from pipeline.job.traffic import read_traffic

__all__ = ["MANIFEST", "SPLITS", "Example", "Experiment", "label_text", "load_experiment"]

MANIFEST = "experiment.yaml"
TRAFFIC = "traffic.jsonl"  # the traffic file read when the manifest names none and the folder has one
SPLITS = ("dev", "holdout")
_KEYS = ("description", "schema", "schema_field", "dataset", "input", "label", "scoring", "warmup", "traffic",
         "cache")
_CACHE_KEYS = ("never",)
_LINE_KEYS = ("id", "split", "expected")
ACCEPT = "accept"
_ACCEPT_KEYS = ("alternatives", "optional", "defaults")
_SCORING_KEYS = ("default", "fields", "optional", "omit_defaults")


@dataclass(frozen=True)
class Example:
    """One request: the line's fields, the user message they render to, and the answer it must get."""

    id: str
    split: str
    fields: Mapping[str, Any]
    request: str
    expected: Any
    schema: AnswerSchema
    label: str | None = None
    accepts: Accepts = NOTHING_ELSE    # what else the expected answer accepts (the line's ``accept``)


@dataclass(frozen=True)
class Experiment:
    name: str
    folder: FilePath
    template: InputTemplate
    schema: AnswerSchema | None
    schema_field: str | None
    label: Path | None
    scorer: Scorer
    examples: tuple[Example, ...]
    warmup: Mapping[str, Any] | None
    digest: str
    dataset_path: FilePath
    description: str = ""
    optional: tuple[Path, ...] = ()   # scoring.optional: paths every line's answer may leave out
    omit_defaults: bool = False       # scoring.omit_defaults
    traffic: Mapping[str, tuple[Example, ...]] = field(default_factory=dict)  # by split; empty: no traffic file
    traffic_path: FilePath | None = None
    files_digest: str = ""  # the digest without the traffic file (:meth:`without_traffic`)
    never_cache: frozenset[str] = frozenset()  # cache.never: labels whose answers a cache never keeps
    _schemas: dict[str, AnswerSchema] = field(default_factory=dict, repr=False, compare=False)

    def without_traffic(self) -> Experiment:
        """The job measured over its dataset splits, its traffic file left out (of its digest too)."""
        if not self.traffic:
            return self
        return replace(self, traffic={}, traffic_path=None, digest=self.files_digest, files_digest="")

    @property
    def requests(self) -> tuple[Example, ...]:
        """Every request a trial may measure: the dataset's examples and, with traffic, each of its arrivals (a
        repeat under its numbered id)."""
        return self.examples + tuple(e for split in self.traffic.values() for e in split)

    @property
    def manifest_path(self) -> FilePath:
        return self.folder / MANIFEST

    @property
    def label_pointer(self) -> str | None:
        return None if self.label is None else format_pointer(self.label)

    def split(self, name: str, limit: int | None = None) -> list[Example]:
        """The examples of one split; with ``limit``, the first ``limit``, taken in turn from each label.

        Taking labels in turn keeps a small evaluation set balanced over them; without a label the first
        ``limit`` lines are taken. The choice is fixed by the file's order, so every trial of a study sees the
        same requests. With a traffic file, a split's requests are its traffic, in arrival order (the first
        ``limit`` of it).
        """
        chosen = [e for e in self.examples if e.split == name] if not self.traffic else self.ordered(name)
        if limit is None or limit >= len(chosen):
            return chosen
        return self.ordered(name)[:limit]

    def ordered(self, name: str) -> list[Example]:
        """Every example of one split in the order :meth:`split` takes them: ``split(name, n)`` is the first ``n``
        of it, and the rest are the requests a trial of ``n`` can be topped up with, in turn."""
        if self.traffic:
            return list(self.traffic.get(name, ()))
        chosen = [e for e in self.examples if e.split == name]
        if self.label is None:
            return chosen
        by_label: dict[str | None, list[Example]] = defaultdict(list)
        for example in chosen:
            by_label[example.label].append(example)
        queues = list(by_label.values())
        picked: list[Example] = []
        while len(picked) < len(chosen):
            for queue in queues:
                if queue:
                    picked.append(queue.pop(0))
        return picked

    @cached_property
    def label_values(self) -> tuple[str, ...]:
        """The label values the dataset uses, in order of first appearance."""
        return tuple(dict.fromkeys(e.label for e in self.examples if e.label is not None))

    @cached_property
    def field_paths(self) -> tuple[str, ...]:
        """The field paths (``*`` for array items) the expected answers use, in first-seen order."""
        paths: dict[str, None] = {}
        for example in self.examples:
            for result in self.scorer.fields(example.expected, example.expected):
                paths.setdefault(result.path)
        return tuple(paths)

    def read_line(self, item: dict[str, Any], where: str, *, answer_key: str) -> tuple[str, Any, AnswerSchema,
                                                                                        str | None]:
        """The user message, answer, schema and label of one line (a dataset line, a few-shot example, the
        warm-up), checked: the template's fields present, the answer valid against its schema, a label there.

        Raises:
            DataError: naming ``where`` and the fix.
        """
        missing = self.template.missing(item)
        if missing:
            raise DataError(f"{where}: missing field {missing[0]!r} that the input template "
                            f"{shown(self.template.text)} uses; add it or change 'input' in {self.manifest_path}")
        request = self.template.render(item)
        if not request.strip():
            raise DataError(f"{where}: the request renders empty; fill in its fields")
        schema = self._line_schema(item, where)
        if answer_key not in item:
            return request, MISSING, schema, None
        answer = item[answer_key]
        error = schema.first_violation(answer, where)
        if error is not None:
            kind = "expected answer" if answer_key == "expected" else "example answer"
            raise DataError(f"{where}: {kind} violates {FilePath(schema.source).name}: {error.message}; fix the "
                            "label or the schema")
        label = None
        if self.label is not None:
            value = resolve(answer, self.label)
            if value is MISSING or isinstance(value, (dict, list)):
                raise DataError(f"{where}: the answer has no value at the label path {self.label_pointer} (got "
                                f"{shown(value)}); label it, or make the schema require it")
            label = label_text(value)
        return request, answer, schema, label

    def _line_schema(self, item: dict[str, Any], where: str) -> AnswerSchema:
        if self.schema_field is not None and self.schema_field in item:
            checked = check_schema(item[self.schema_field], f"{where} ({self.schema_field})")
            return self._schemas.setdefault(checked.digest, checked)
        if self.schema is None:
            raise DataError(f"{where}: no schema: add the field {self.schema_field!r} with this request's JSON "
                            f"Schema, or set 'schema' in {self.manifest_path}")
        return self.schema

    def accepted(self, accepts: Accepts, expected: Any, schema: AnswerSchema) -> Accepts:
        """A line's ``accept`` with what the manifest's scoring accepts of every line: its ``optional`` paths, and
        with ``omit_defaults`` the default of every field the schema does not require (the line's own say first)."""
        if not self.optional and not self.omit_defaults:
            return accepts
        optional, defaults = set(accepts.optional), dict(accepts.defaults)
        for path in _paths_in(expected):
            if any(matches(pattern, path) for pattern in self.optional):
                optional.add(path)
            elif self.omit_defaults and path not in defaults and path not in optional \
                    and not required_at(schema.document, path):
                default = default_at(schema.document, path)
                if default is not MISSING:
                    defaults[path] = default
        return Accepts(accepts.alternatives, frozenset(optional), defaults)

    @property
    def schemas(self) -> list[AnswerSchema]:
        """Every distinct schema: the job's, and those the requests carry."""
        found = [self.schema] if self.schema is not None else []
        return found + [s for s in self._schemas.values() if s not in found]


def label_text(value: Any) -> str:
    """A label value as the router and the split name it: strings as they are, other values as JSON."""
    return value if isinstance(value, str) else json.dumps(value)


def load_experiment(folder: FilePath) -> Experiment:
    """Load and check an experiment folder (see the module docstring). One function, a little over 60 lines:
    the checks run in the order their messages promise (manifest, schema, rules, label, dataset), each naming its
    file.

    Raises:
        DataError: a missing or unreadable file, an invalid manifest or schema, a scoring rule or label that the
            schema cannot have, or a bad dataset line (``file:line``).
    """
    if not folder.is_dir():
        raise DataError(f"experiment folder {folder} not found; point 'experiment' at a folder with {MANIFEST} "
                        "(`python -m pipeline init NAME` writes one)")
    manifest_path = folder / MANIFEST
    if not manifest_path.is_file():
        raise DataError(f"{manifest_path} not found: an experiment folder needs a manifest naming its schema, "
                        "dataset and input template; `python -m pipeline init NAME` writes a commented one")
    manifest_bytes, text = read_text(manifest_path)
    raw = parse_yaml(manifest_path, text, DataError, what="manifest", depth="a manifest needs three levels at most",
                     unique_keys=True)
    where = str(manifest_path)
    if not isinstance(raw, dict):
        raise DataError(f"{where}: must be a mapping of {', '.join(_KEYS)}, got {json_kind(raw)}")
    if (problem := unknown_key(raw, _KEYS)) is not None:
        raise DataError(f"{where}: {problem}")
    description = raw.get("description") or ""
    if not isinstance(description, str):
        raise DataError(f"{where}: 'description' must be text, got {shown(description)}")
    schema, schema_bytes = _job_schema(folder, raw, where)
    schema_field = raw.get("schema_field")
    if schema_field is not None and (not isinstance(schema_field, str) or not schema_field.strip()):
        raise DataError(f"{where}: 'schema_field' must name a dataset field holding each request's schema, got "
                        f"{shown(schema_field)}")
    if schema is None and schema_field is None:
        raise DataError(f"{where}: no schema: set 'schema' to the JSON Schema file answers must follow, or "
                        "'schema_field' to the dataset field that holds each request's own")
    template = InputTemplate.parse(raw.get("input", "{request}"), f"{where} (input)")
    dataset_path = _file(folder, raw.get("dataset", "dataset.jsonl"), f"{where} (dataset)")
    label = _pointer(raw.get("label"), f"{where} (label)") if raw.get("label") is not None else None
    if label is not None and ANY in label:
        raise DataError(f"{where} (label): the label names one value; {format_pointer(label)} has a '*'")
    rules = _rules(raw.get("scoring"), f"{where} (scoring)")
    optional, omit_defaults = _manifest_accepts(raw.get("scoring"), where)
    if label is not None and isinstance(rules.leaf_rule(label), Ignore):
        raise DataError(f"{where}: the label {format_pointer(label)} is ignored by 'scoring'; score it, or drop the "
                        "label")
    experiment = Experiment(
        name=folder.name, folder=folder, template=template, schema=schema, schema_field=schema_field,
        label=label, scorer=Scorer(rules, label), examples=(), warmup=None, digest="", dataset_path=dataset_path,
        description=description, optional=optional, omit_defaults=omit_defaults)
    if schema_field is None:  # every schema is known before the lines: check the paths first
        _check_paths(experiment, rules, label, where)
    dataset_bytes, examples = _read_dataset(experiment, dataset_path)
    warmup = raw.get("warmup")
    if warmup is not None:
        if not isinstance(warmup, dict):
            raise DataError(f"{where}: 'warmup' must map the input template's fields to values, e.g. "
                            f"{{{', '.join(f'{n}: ...' for n in template.fields)}}}")
        experiment.read_line(warmup, f"{where} (warmup)", answer_key="expected")
    if schema_field is not None:
        _check_paths(experiment, rules, label, where)
    files = hashlib.sha256(manifest_bytes + b"\0" + schema_bytes + b"\0" + dataset_bytes)
    experiment = replace(experiment, examples=tuple(examples), warmup=warmup, digest=files.hexdigest())
    # like the dataset, the traffic has a default name: traffic.jsonl beside the manifest, where there is one
    named = raw.get("traffic", TRAFFIC if (folder / TRAFFIC).is_file() else None)
    if named is not None:
        traffic_path = _file(folder, named, f"{where} (traffic)")
        files.update(b"\0" + read_text(traffic_path)[0])
        traffic = {split: tuple(requests) for split, requests in read_traffic(
            experiment.examples, traffic_path, lambda item, spot: _example(experiment, item, spot, set()),
            labelled=label is not None).items()}
        experiment = replace(experiment, digest=files.hexdigest(), traffic=traffic, traffic_path=traffic_path,
                             files_digest=experiment.digest)
    return replace(experiment, never_cache=_never_cache(raw.get("cache"), experiment, where))


def _never_cache(raw: Any, experiment: Experiment, where: str) -> frozenset[str]:
    """The manifest's ``cache.never``: labels the dataset or the traffic has, for a job with a label."""
    if raw is None:
        return frozenset()
    if not isinstance(raw, dict):
        raise DataError(f"{where}: 'cache' must be a mapping such as {{never: [<label>, ...]}}, got {shown(raw)}")
    if (problem := unknown_key(raw, _CACHE_KEYS)) is not None:
        raise DataError(f"{where} (cache): {problem}")
    never = raw.get("never", [])
    if not isinstance(never, list) or not all(isinstance(n, (str, int, float, bool)) for n in never):
        raise DataError(f"{where}: cache.never must be a list of labels, e.g. [delete_task], got {shown(never)}")
    if never and experiment.label is None:
        raise DataError(f"{where}: cache.never names labels, but the experiment has no 'label' to read them at; "
                        "set 'label' or drop cache.never")
    labels = {e.label for e in experiment.requests if e.label is not None}
    for value in never:
        if label_text(value) not in labels:
            raise DataError(f"{where}: cache.never names {label_text(value)!r}, which no request of the dataset or "
                            f"the traffic has.{did_you_mean(label_text(value), labels)} Name a label at "
                            f"{experiment.label_pointer}")
    return frozenset(label_text(v) for v in never)


def _file(folder: FilePath, value: Any, where: str) -> FilePath:
    if not isinstance(value, str) or not value.strip() or "\x00" in value:
        raise DataError(f"{where}: must be a file name in {folder}, got {shown(value)}")
    path = (folder / value).resolve()
    if not path.is_file():
        raise DataError(f"{path} not found ({where}); create it or fix the file name")
    return path


def _job_schema(folder: FilePath, raw: dict[str, Any], where: str) -> tuple[AnswerSchema | None, bytes]:
    if raw.get("schema") is None:
        return None, b""
    path = _file(folder, raw["schema"], f"{where} (schema)")
    data, text = read_text(path)
    return check_schema(parse_json(text, str(path), whole_file=True), str(path)), data


def _pointer(value: Any, where: str) -> Path:
    if not isinstance(value, str):
        raise DataError(f"{where}: a path is a JSON Pointer such as /category, got {shown(value)}")
    try:
        return parse_pointer(value)
    except ValueError as exc:
        raise DataError(f"{where}: {shown(value)} is not a JSON Pointer: {exc}") from exc


def _rules(raw: Any, where: str) -> RuleSet:
    if raw is None:
        return RuleSet()
    if not isinstance(raw, dict):
        raise DataError(f"{where}: must be a mapping with 'default' (a rule), 'fields' (path: rule), 'optional' "
                        "(paths) and 'omit_defaults' (true or false)")
    if (problem := unknown_key(raw, _SCORING_KEYS)) is not None:
        raise DataError(f"{where}: {problem}")
    default = make_rule(raw.get("default", "text"), f"{where} (default)") if "default" in raw else Text()
    if isinstance(default, Unordered):
        raise DataError(f"{where} (default): 'unordered' compares arrays; give it per path, e.g. /items: unordered")
    fields = raw.get("fields") or {}
    if not isinstance(fields, dict):
        raise DataError(f"{where} (fields): must map answer paths (JSON Pointers) to rules, got {shown(fields)}")
    by_path = {_pointer(path, f"{where} (fields)"): make_rule(spec, f"{where} (fields.{path})")
               for path, spec in fields.items()}
    return RuleSet(default, by_path)


def _manifest_accepts(raw: Any, where: str) -> tuple[tuple[Path, ...], bool]:
    """The manifest's ``scoring.optional`` paths and ``scoring.omit_defaults``."""
    if not isinstance(raw, dict):
        return (), False
    optional = raw.get("optional") or []
    if not isinstance(optional, list):
        raise DataError(f"{where} (scoring.optional): must list the paths an answer may leave out, e.g. [/note], got "
                        f"{shown(optional)}")
    omit = raw.get("omit_defaults", False)
    if not isinstance(omit, bool):
        raise DataError(f"{where} (scoring.omit_defaults): must be true or false, got {shown(omit)}")
    return tuple(_pointer(p, f"{where} (scoring.optional)") for p in optional), omit


def _paths_in(value: Any, path: Path = ()) -> list[Path]:
    """Every path below the root of a JSON value: members, items, and theirs."""
    children = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    out: list[Path] = []
    for key, child in children:
        out.append(path + (str(key),))
        out.extend(_paths_in(child, path + (str(key),)))
    return out


_SHAPE = "id, split, expected and the input template's fields"


def _example(experiment: Experiment, item: dict[str, Any], where: str, seen: set[str]) -> Example:
    """One labelled request (a dataset line, or a new request of the traffic), checked."""
    missing = [k for k in _LINE_KEYS if k not in item]
    if missing:
        raise DataError(f"{where}: missing {', '.join(missing)}; each line needs {_SHAPE}")
    if not isinstance(item["id"], str) or item["id"] in seen:
        raise DataError(f"{where}: id {shown(item['id'])} must be a unique string")
    if not item["id"].strip():
        raise DataError(f"{where}: id is empty; give each line a unique id")
    if item["split"] not in SPLITS:
        raise DataError(f"{where}: split {shown(item['split'])} must be one of {', '.join(SPLITS)}")
    request, expected, schema, label = experiment.read_line(item, where, answer_key="expected")
    accepts = _accepts(item[ACCEPT], expected, schema, where) if ACCEPT in item else NOTHING_ELSE
    accepts = experiment.accepted(accepts, expected, schema)
    return Example(item["id"], item["split"], item, request, expected, schema, label, accepts)


def _read_dataset(experiment: Experiment, path: FilePath) -> tuple[bytes, list[Example]]:
    raw = read_text(path)[0]
    examples: list[Example] = []
    seen: set[str] = set()
    for where, item in jsonl_objects(path, _SHAPE):
        examples.append(_example(experiment, item, where, seen))
        seen.add(examples[-1].id)
    if not examples:
        raise DataError(f"{path}: no examples; add one JSON object per line")
    return raw, examples


def _accepts(raw: Any, expected: Any, schema: AnswerSchema, where: str) -> Accepts:
    """A line's ``accept``, checked: every path in the expected answer, every alternative and default a value the
    schema allows there, no optional mark where the schema requires the field.

    Raises:
        DataError: naming the line, the path and the fix.
    """
    if not isinstance(raw, dict):
        raise DataError(f"{where} ({ACCEPT}): must be an object with {', '.join(_ACCEPT_KEYS)}, got {shown(raw)}")
    if (problem := unknown_key(raw, _ACCEPT_KEYS)) is not None:
        raise DataError(f"{where} ({ACCEPT}): {problem}")

    def path_of(text: Any, part: str) -> Path:
        path = _pointer(text, f"{where} ({ACCEPT}.{part})")
        if ANY in path:
            raise DataError(f"{where} ({ACCEPT}.{part}): {text} has a '*'; name one field of this answer, such as "
                            "/items/0/x")
        if resolve(expected, path) is MISSING:
            raise DataError(f"{where} ({ACCEPT}.{part}): {text} is not in the expected answer; name a field it has")
        return path

    def allowed(path: Path, value: Any, what: str) -> None:
        error = schema.first_violation(_replaced(expected, path, value), where)
        if error is not None:
            raise DataError(f"{where} ({ACCEPT}): {what} {shown(value)} at {format_pointer(path)} violates "
                            f"{FilePath(schema.source).name}: {error.message}; fix it or the schema")

    alternatives = raw.get("alternatives", {})
    if not isinstance(alternatives, dict):
        raise DataError(f"{where} ({ACCEPT}.alternatives): must map paths to lists of other acceptable values, e.g. "
                        '{"/unit": ["celsius"]}')
    accepted: dict[Path, tuple[Any, ...]] = {}
    for text, values in alternatives.items():
        path = path_of(text, "alternatives")
        if not isinstance(values, list) or not values:
            raise DataError(f"{where} ({ACCEPT}.alternatives): {text} needs a non-empty list of other acceptable "
                            f"values, got {shown(values)}; remove it if the expected value is the only one")
        for value in values:
            allowed(path, value, "the alternative")
        accepted[path] = tuple(values)
    optional = raw.get("optional", [])
    if not isinstance(optional, list):
        raise DataError(f"{where} ({ACCEPT}.optional): must list the paths the answer may leave out, e.g. [\"/note\"]")
    left_out = set()
    for text in optional:
        path = path_of(text, "optional")
        if required_at(schema.document, path):
            raise DataError(f"{where} ({ACCEPT}.optional): {text} is required by {FilePath(schema.source).name}; an "
                            "answer cannot leave it out: drop the mark, or the field from the schema's 'required'")
        left_out.add(path)
    defaults = raw.get("defaults", {})
    if not isinstance(defaults, dict):
        raise DataError(f"{where} ({ACCEPT}.defaults): must map paths to the value an absent field means, e.g. "
                        '{"/z": 0}')
    meant: dict[Path, Any] = {}
    for text, value in defaults.items():
        path = path_of(text, "defaults")
        allowed(path, value, "the default")
        meant[path] = value
    return Accepts(accepted, frozenset(left_out), meant)


def _replaced(value: Any, path: Path, new: Any) -> Any:
    """``value`` with ``new`` at ``path`` (which ``value`` has), as a copy."""
    if not path:
        return new
    head, rest = path[0], path[1:]
    if isinstance(value, dict):
        return {**value, head: _replaced(value[head], rest, new)}
    items = list(value)
    items[int(head)] = _replaced(items[int(head)], rest, new)
    return items


def _check_paths(experiment: Experiment, rules: RuleSet, label: Path | None, where: str) -> None:
    """Every path the manifest names must exist in some schema, with a type its rule can judge."""
    schemas = [s.document for s in experiment.schemas]

    def types(path: Path) -> frozenset[str] | None:
        found = [types_at(s, path) for s in schemas]
        return None if any(t is None for t in found) else frozenset().union(*found)

    checks = [(p, r, f"{where} (scoring.fields.{format_pointer(p)})") for p, r in rules.by_path.items()]
    for path, rule, spot in checks:
        allowed = types(path)
        if allowed is not None and not allowed:
            raise DataError(f"{spot}: {format_pointer(path)} matches nothing in the schema; fix the path (use * "
                            "for array items) or the schema")
        if allowed is not None and rule.applies_to is not None and not allowed & rule.applies_to:
            raise DataError(f"{spot}: rule {rule.name!r} cannot judge {format_pointer(path)}, which the schema "
                            f"makes {' or '.join(sorted(allowed))}; use exact or text")
        if isinstance(rule, Unordered) and rule.key is not None:
            key_types = types(path + (ANY, rule.key))
            if key_types is not None and not key_types:
                raise DataError(f"{spot}: the items of {format_pointer(path)} have no member {rule.key!r}; name "
                                "one of their members as 'key', or leave 'key' out to pair items as a multiset")
    for path in experiment.optional:
        spot = f"{where} (scoring.optional)"
        if types(path) is not None and not types(path):
            raise DataError(f"{spot}: {format_pointer(path)} matches nothing in the schema; fix the path (use * for "
                            "array items) or the schema")
        required = next((s for s in experiment.schemas if required_at(s.document, path)), None)
        if required is not None:
            raise DataError(f"{spot}: {format_pointer(path)} is required by {FilePath(required.source).name}; an "
                            "answer cannot leave it out: drop it, or the field from the schema's 'required'")
    if label is not None:
        allowed = types(label)
        if allowed is not None and not allowed:
            raise DataError(f"{where} (label): {format_pointer(label)} matches nothing in the schema; fix the path")
        if allowed is not None and not allowed - {"object", "array"}:
            raise DataError(f"{where} (label): {format_pointer(label)} is an {' or '.join(sorted(allowed))} in "
                            "the schema; a label must be one value, such as an enum string")
