"""The experiment manifest: every key, the checks against the schema, per-request schemas, the input template."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from pipeline.engines.settings import InferenceSettings
from pipeline.errors import DataError
from pipeline.job.experiment import load_experiment
from pipeline.job.prompts import load_prompts
from pipeline.job.template import InputTemplate
from pipeline.measure.runner import TrialPlan, run_trial
from pipeline.testing import FakeBackend, answers_by_request

SCHEMA = {"type": "object", "additionalProperties": False, "required": ["category", "amount"],
          "properties": {"category": {"enum": ["a", "b"]}, "amount": {"type": "number"},
                         "items": {"type": "array", "items": {"type": "object", "additionalProperties": False,
                                                              "properties": {"sku": {"type": "string"},
                                                                             "qty": {"type": "integer"}}}},
                         "vendor": {"type": "object", "properties": {"name": {"type": "string"}}},
                         "note": {"type": "string"}}}
LINES = [{"id": "1", "split": "dev", "sender": "Ana", "body": "one", "expected": {"category": "a", "amount": 1}},
         {"id": "2", "split": "dev", "sender": "Bo", "body": "two", "expected": {"category": "b", "amount": 2}},
         {"id": "3", "split": "dev", "sender": "Cy", "body": "three", "expected": {"category": "a", "amount": 3}},
         {"id": "4", "split": "holdout", "sender": "Di", "body": "four", "expected": {"category": "b", "amount": 4}}]
MANIFEST = {"schema": "schema.json", "input": "Email from {sender}: {body}", "label": "/category",
            "scoring": {"default": "exact", "fields": {"/amount": {"rule": "number", "tolerance": 0.5},
                                                       "/items": {"rule": "unordered", "key": "sku"},
                                                       "/note": "ignore"}}}


def make(folder: Path, manifest: dict[str, Any] | str | None = None, lines: list[Any] | None = None,
         schema: Any = SCHEMA) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    manifest = MANIFEST if manifest is None else manifest
    (folder / "experiment.yaml").write_text(manifest if isinstance(manifest, str) else yaml.safe_dump(manifest))
    (folder / "schema.json").write_text(json.dumps(schema))
    (folder / "dataset.jsonl").write_text("".join(json.dumps(line) + "\n" for line in (LINES if lines is None
                                                                                         else lines)))
    return folder


def test_manifest_keys_are_read(tmp_path):
    experiment = load_experiment(make(tmp_path / "job"))
    assert experiment.name == "job" and experiment.label_pointer == "/category"
    assert [e.request for e in experiment.examples[:2]] == ["Email from Ana: one", "Email from Bo: two"]
    assert [e.label for e in experiment.examples] == ["a", "b", "a", "b"]
    assert experiment.field_paths == ("/category", "/amount")
    # the rules came through: a close amount is right, an ignored note is not scored
    example = experiment.examples[0]
    result = experiment.scorer.score('{"category": "a", "amount": 1.4, "note": "x"}', example.expected, example.schema)
    assert result.exact_match and [f.path for f in result.fields] == ["/category", "/amount"]


def test_comment_lines_and_blank_lines_in_the_dataset_are_skipped(tmp_path):
    folder = make(tmp_path / "job")
    path = folder / "dataset.jsonl"
    path.write_text("# a comment\n\n" + path.read_text())
    assert len(load_experiment(folder).examples) == 4


def test_split_balances_labels_and_without_a_label_keeps_file_order(tmp_path):
    experiment = load_experiment(make(tmp_path / "job"))
    assert [e.id for e in experiment.split("dev", 2)] == ["1", "2"]  # a, b
    lines = [LINES[0], LINES[2], LINES[1], LINES[3]]  # a, a, b
    assert [e.id for e in load_experiment(make(tmp_path / "job2", lines=lines)).split("dev", 2)] == ["1", "2"]
    unlabelled = load_experiment(make(tmp_path / "job3", {**MANIFEST, "label": None}, lines=lines))
    assert [e.id for e in unlabelled.split("dev", 2)] == ["1", "3"]


@pytest.mark.parametrize(("manifest", "message"), [
    ({**MANIFEST, "labels": "/category"}, r"unknown key 'labels'. Did you mean 'label'\?"),
    ({k: v for k, v in MANIFEST.items() if k != "schema"}, "no schema: set 'schema'"),
    ({**MANIFEST, "schema": "missing.json"}, r"missing.json not found \(.*schema\)"),
    ({**MANIFEST, "input": 3}, "'input' must be a template"),
    ({**MANIFEST, "input": "{sender.name}"}, "placeholder '{sender.name}' must be a plain field name"),
    ({**MANIFEST, "input": "{body"}, "input template '{body': .*; write {field}"),
    ({**MANIFEST, "input": "{subject}"}, "dataset.jsonl:1: missing field 'subject' that the input template"),
    ({**MANIFEST, "label": "category"}, r"'category' is not a JSON Pointer: a path starts with '/'"),
    ({**MANIFEST, "label": "/vendor"}, r"\(label\): /vendor is an object in the schema; a label must be one value"),
    ({**MANIFEST, "label": "/vendor/name"}, "dataset.jsonl:1: the answer has no value at the label path /vendor/name"),
    ({**MANIFEST, "label": "/note"}, "the label /note is ignored by 'scoring'"),
    ({**MANIFEST, "label": "/items/*/sku"}, "the label names one value"),
    ({**MANIFEST, "scoring": {"fields": {"/amount": "numbr"}}}, r"unknown rule 'numbr'. Did you mean 'number'\?"),
    ({**MANIFEST, "scoring": {"fields": {"/amont": "number"}}}, "/amont matches nothing in the schema"),
    ({**MANIFEST, "scoring": {"fields": {"/items/*/colour": "text"}}}, "/items/\\*/colour matches nothing"),
    ({**MANIFEST, "scoring": {"fields": {"/category": "number"}}},
     "rule 'number' cannot judge /category, which the schema makes string"),
    ({**MANIFEST, "scoring": {"fields": {"/vendor": "unordered"}}}, "rule 'unordered' cannot judge /vendor"),
    ({**MANIFEST, "scoring": {"fields": {"/items": {"rule": "unordered", "key": "id"}}}},
     "the items of /items have no member 'id'"),
    ({**MANIFEST, "scoring": {"default": "unordered"}}, "'unordered' compares arrays; give it per path"),
    ({**MANIFEST, "scoring": {"rules": {}}}, r"unknown key 'rules'"),
    ({**MANIFEST, "scoring": {"fields": {"/category": "ignore"}}}, "the label /category is ignored by 'scoring'"),
    ({**MANIFEST, "warmup": {"sender": "Ed"}}, r"\(warmup\): missing field 'body'"),
    ("schema: [", "experiment.yaml:1: not valid YAML"),
    ("schema: a\nschema: b\n", "key 'schema' is given twice"),
])
def test_bad_manifests_are_one_line_errors(tmp_path, manifest, message):
    with pytest.raises(DataError, match=message) as caught:
        load_experiment(make(tmp_path / "job", manifest))
    assert "\n" not in str(caught.value)


def test_a_number_label_is_fine_and_its_json_text_is_the_label(tmp_path):
    experiment = load_experiment(make(tmp_path / "job", {**MANIFEST, "label": "/amount"}))
    assert experiment.label_pointer == "/amount"
    # the amounts 1, 2, 3, 4 of LINES, written as JSON
    assert [e.label for e in experiment.examples] == ["1", "2", "3", "4"]
    assert experiment.label_values == ("1", "2", "3", "4")


def test_missing_manifest_points_at_init(tmp_path):
    folder = make(tmp_path / "job")
    (folder / "experiment.yaml").unlink()
    with pytest.raises(DataError, match="experiment.yaml not found: .*`python -m pipeline init NAME`"):
        load_experiment(folder)


def test_bad_dataset_lines_are_named_by_line(tmp_path):
    lines = [*LINES, {"id": "5", "split": "dev", "sender": "x", "body": "y", "expected": {"category": "c",
                                                                                          "amount": 1}}]
    with pytest.raises(DataError, match=r"dataset.jsonl:5: expected answer violates schema.json: 'c' is not one of"):
        load_experiment(make(tmp_path / "a", lines=lines))
    with pytest.raises(DataError, match=r"dataset.jsonl:2: id '1' must be a unique string"):
        load_experiment(make(tmp_path / "b", lines=[LINES[0], LINES[0]]))
    with pytest.raises(DataError, match=r"dataset.jsonl:1: missing expected"):
        load_experiment(make(tmp_path / "c", lines=[{"id": "1", "split": "dev", "sender": "x", "body": "y"}]))
    (make(tmp_path / "d") / "dataset.jsonl").write_text("{not json\n")
    with pytest.raises(DataError, match=r"dataset.jsonl:1: not JSON"):
        load_experiment(tmp_path / "d")


def test_formats_in_the_schema_are_checked(tmp_path):
    schema = {"type": "object", "properties": {"date": {"type": "string", "format": "date"}}, "required": ["date"]}
    lines = [{"id": "1", "split": "dev", "request": "x", "expected": {"date": "2024-14-03"}}]
    with pytest.raises(DataError, match="'2024-14-03' is not a 'date'"):
        load_experiment(make(tmp_path / "job", {"schema": "schema.json"}, lines=lines, schema=schema))


# -- per-request schemas (tool calling) -------------------------------------------------------------------

def _tool(name: str, argument: str, kind: str) -> dict[str, Any]:
    return {"type": "object", "additionalProperties": False, "required": ["tool", "arguments"],
            "properties": {"tool": {"const": name},
                           "arguments": {"type": "object", "additionalProperties": False, "required": [argument],
                                         "properties": {argument: {"type": kind}}}}}


TOOL_LINES = [
    {"id": "w", "split": "dev", "request": "Weather in Oslo?", "tools": _tool("weather", "city", "string"),
     "expected": {"tool": "weather", "arguments": {"city": "Oslo"}}},
    {"id": "t", "split": "dev", "request": "Set a timer for 5 minutes", "tools": _tool("timer", "minutes", "integer"),
     "expected": {"tool": "timer", "arguments": {"minutes": 5}}},
]
TOOL_MANIFEST = {"schema_field": "tools", "input": "Tools: {tools}\n{request}", "label": "/tool",
                 "scoring": {"fields": {"/arguments/minutes": "number"}}}


def test_per_request_schemas_judge_each_answer_and_reach_the_engine(tmp_path):
    folder = make(tmp_path / "tools", TOOL_MANIFEST, lines=TOOL_LINES)
    (folder / "schema.json").unlink()
    experiment = load_experiment(folder)
    weather, timer = experiment.examples
    assert weather.schema.document == TOOL_LINES[0]["tools"] and len(experiment.schemas) == 2
    assert weather.request.startswith('Tools: {"type": "object"')  # a JSON field is inserted as JSON text
    # an answer valid for one request's tool is invalid for the other's
    answer = json.dumps(weather.expected)
    assert experiment.scorer.score(answer, weather.expected, weather.schema).schema_valid
    assert not experiment.scorer.score(answer, timer.expected, timer.schema).schema_valid
    # format=schema sends each request's own schema to the engine
    prompts_folder = tmp_path / "prompts"
    prompts_folder.mkdir()
    (prompts_folder / "plain.txt").write_text("Call one tool.")
    (prompts_folder / "examples.jsonl").write_text("")
    prompts = load_prompts(prompts_folder, experiment)
    backend = FakeBackend(answers_by_request({e.request: e.expected for e in experiment.examples}))
    plan = TrialPlan(prompts=prompts, backend=backend, scorer=experiment.scorer, warmup=weather)
    settings = InferenceSettings(1024, 64, 0.0, 1.0, 40, 0, "plain", "static", "schema")
    outcome = run_trial(settings, list(experiment.examples), plan)
    assert backend.schemas[-2:] == [TOOL_LINES[0]["tools"], TOOL_LINES[1]["tools"]]
    assert all(r.score.exact_match and r.score.schema_valid for r in outcome.records)


def test_per_request_schema_field_falls_back_to_the_job_schema_or_fails(tmp_path):
    lines = [TOOL_LINES[0], {**TOOL_LINES[1], "tools": None}]
    lines[1] = {k: v for k, v in lines[1].items() if k != "tools"}
    folder = make(tmp_path / "tools", {**TOOL_MANIFEST, "input": "{request}"}, lines=lines)
    (folder / "schema.json").unlink()
    with pytest.raises(DataError, match="dataset.jsonl:2: no schema: add the field 'tools'"):
        load_experiment(folder)
    fallback = make(tmp_path / "fallback", {**TOOL_MANIFEST, "input": "{request}", "schema": "schema.json"},
                    lines=lines, schema=_tool("timer", "minutes", "integer"))
    assert load_experiment(fallback).examples[1].schema.source.endswith("schema.json")
    with pytest.raises(DataError, match=r"dataset.jsonl:1 \(tools\): invalid JSON Schema"):
        load_experiment(make(tmp_path / "bad", TOOL_MANIFEST, lines=[{**TOOL_LINES[0], "tools": {"type": 5}}]))
    with pytest.raises(DataError, match="/arguments/minutes matches nothing in the schema"):
        load_experiment(make(tmp_path / "one", TOOL_MANIFEST, lines=[TOOL_LINES[0]]))


def test_template_renders_fields_and_literal_braces():
    template = InputTemplate.parse("{{json}} {a} and {b}", "here")
    assert template.fields == ("a", "b")
    assert template.render({"a": "x", "b": [1, "é"]}) == '{json} x and [1, "é"]'
    assert template.missing({"a": 1}) == ["b"]


def test_no_generic_module_knows_a_jobs_shape():
    """A job is files: the Task API's answer shape appears in no name or string of the pipeline's code (docstrings
    and comments may cite it as an example)."""
    import ast
    import re

    from tests.conftest import ROOT

    for path in (ROOT / "pipeline").rglob("*.py"):
        tree = ast.parse(path.read_text())
        docstrings = {id(node.body[0].value) for node in ast.walk(tree)
                      if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
                      and node.body and isinstance(node.body[0], ast.Expr)}
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings:
                text = node.value.replace("store_true", "").replace("configs/task_api.yaml", "")
            elif isinstance(node, (ast.Name, ast.Attribute, ast.arg, ast.FunctionDef, ast.keyword)):
                text = getattr(node, "id", None) or getattr(node, "attr", None) or getattr(node, "arg", None) or \
                    getattr(node, "name", "")
                text = "" if text == "action" and isinstance(node, ast.keyword) else text  # argparse's keyword
            else:
                continue
            assert not re.search(r"(^|[^a-z])action|task_api|create_task", text or ""), f"{path}:{node.lineno}: {text}"
