"""What else an expected answer accepts: alternatives per field, fields an answer may leave out, defaults — scored
field by field, read from a dataset line's ``accept``, and ranking a study's settings as a labelled set means."""

from __future__ import annotations

import io
import json
import shutil

import pytest
from rich.console import Console

from pipeline.job.experiment import load_experiment
from pipeline.job.schemas import check_schema
from pipeline.job.scoring import Accepts, Scorer
from pipeline.measure.metrics import optimistic_bound, summarize
from pipeline.measure.records import RequestRecord
from pipeline.measure.tables import requests_frame
from pipeline.search.config import load_config
from pipeline.search.prepare import prepare_study
from pipeline.search.study import run_study
from pipeline.testing import FakeBackend
from tests.conftest import EXPERIMENT, smoke_config

ANY_SCHEMA = check_schema({}, "test")
CALL = {"name": "get_weather", "arguments": {"city": "Paris", "unit": "celsius", "days": 1, "detail": False}}
ACCEPTS = Accepts(alternatives={("arguments", "unit"): ("metric",), ("arguments", "city"): ("Paris, FR", "paris")},
                  optional=frozenset({("arguments", "detail")}), defaults={("arguments", "days"): 1})


def judged(got, accepts=ACCEPTS):
    score = Scorer().score(json.dumps(got), CALL, ANY_SCHEMA, accepts)
    return score, {f.path: (f.correct, f.matched) for f in score.fields}


def test_an_answer_matching_any_alternative_is_right_and_says_which():
    score, fields = judged({"name": "get_weather", "arguments": {"city": "Paris, FR", "unit": "metric",
                                                                 "days": 1, "detail": False}})
    assert score.exact_match and score.field_accuracy == 1.0
    assert fields["/arguments/city"] == (True, "alternative 1") and fields["/arguments/unit"] == (True, "alternative 1")
    assert fields["/arguments/days"] == (True, "")  # the expected value itself
    # every alternative is judged by the field's rule (text folds case and space): "PARIS" is the expected value
    _, loud = judged({"name": "get_weather", "arguments": {"city": " PARIS ", "unit": "celsius", "days": 1}})
    assert loud["/arguments/city"] == (True, "")
    # a value no alternative has is wrong, judged against the expected value
    score, wrong = judged({"name": "get_weather", "arguments": {"city": "Lyon", "unit": "kelvin", "days": 1}})
    assert wrong["/arguments/city"] == (False, "") and wrong["/arguments/unit"] == (False, "")
    assert score.field_accuracy == pytest.approx(3 / 5)


def test_an_optional_field_may_be_left_out_and_a_default_stands_for_an_absent_field():
    score, fields = judged({"name": "get_weather", "arguments": {"city": "Paris", "unit": "celsius"}})
    assert score.exact_match and fields["/arguments/detail"] == (True, "left out")
    assert fields["/arguments/days"] == (True, "default")
    # the default is judged by the rule: an expected value other than the default, left out, is wrong
    other = Accepts(defaults={("arguments", "days"): 3})
    _, fields = judged({"name": "get_weather", "arguments": {"city": "Paris", "unit": "celsius", "detail": False}},
                       other)
    assert fields["/arguments/days"] == (False, "default")
    # an optional field given is judged as usual; a field nobody expected is still wrong
    _, fields = judged({"name": "get_weather", "arguments": {"city": "Paris", "unit": "celsius", "days": 1,
                                                             "detail": True, "extra": 1}})
    assert fields["/arguments/detail"] == (False, "") and fields["/arguments/extra"] == (False, "")
    # without the line's accept, the same terse answer loses every field it left out
    score, _ = judged({"name": "get_weather", "arguments": {"city": "Paris", "unit": "celsius"}}, Accepts())
    assert score.field_accuracy == pytest.approx(3 / 5)


def test_an_alternative_may_be_a_whole_object_and_the_best_fitting_one_counts():
    expected = {"call": {"f": "a", "x": 1}}
    accepts = Accepts(alternatives={("call",): ({"f": "b"},)})
    score = Scorer().score('{"call": {"f": "b"}}', expected, ANY_SCHEMA, accepts)
    assert score.exact_match and {f.matched for f in score.fields} == {"alternative 1"}
    half = Scorer().score('{"call": {"f": "a"}}', expected, ANY_SCHEMA, accepts)
    assert not half.exact_match and half.field_accuracy == 0.5  # the expected object fits it best: x is missing


def test_metrics_bounds_and_tables_keep_their_meaning():
    # field accuracy, exact match and per-field accuracy count a field right by any alternative; the early-abort
    # bound assumes the requests left answer perfectly, as before; requests.json says what was accepted how
    def record(got, index):
        score = Scorer().score(json.dumps(got), CALL, ANY_SCHEMA, ACCEPTS)
        return RequestRecord(f"r{index}", "q", CALL, json.dumps(got), score, 100.0, ttft_ms=1.0)

    terse = {"name": "get_weather", "arguments": {"city": "Paris, FR", "unit": "metric"}}
    wrong = {"name": "get_weather", "arguments": {"city": "Lyon", "unit": "metric"}}
    records = [record(terse, 0), record(wrong, 1)]
    metrics = summarize(records)
    assert metrics["exact_match_rate"] == 0.5 and metrics["field_accuracy"] == pytest.approx((1 + 4 / 5) / 2)
    assert optimistic_bound(records, 4, "field_accuracy") == pytest.approx((1 + 4 / 5 + 2) / 4)
    rows = requests_frame(records)
    assert rows.loc[0, "accepted"] == ("/arguments/city (alternative 1), /arguments/unit (alternative 1), "
                                       "/arguments/days (default), /arguments/detail (left out)")
    assert rows.loc[1, "wrong_fields"] == "/arguments/city"


def job_with_accept(tmp_path):
    """The Task API job, its create_task lines accepting an answer that leaves out /params/due and names the
    title in other words."""
    folder = shutil.copytree(EXPERIMENT, tmp_path / "task_api")
    lines = []
    for line in (folder / "dataset.jsonl").read_text().splitlines():
        item = json.loads(line)
        params = item["expected"]["params"]
        if item["expected"]["action"] == "create_task" and "due" in params:
            item["accept"] = {"optional": ["/params/due"],
                              "alternatives": {"/params/title": [f"task: {params['title']}"]}}
        lines.append(json.dumps(item))
    (folder / "dataset.jsonl").write_text("\n".join(lines) + "\n")
    return folder


def test_a_line_accept_is_read_with_the_dataset(tmp_path):
    experiment = load_experiment(job_with_accept(tmp_path))
    accepting = [e for e in experiment.examples if e.accepts]
    assert accepting and all(e.accepts.optional == {("params", "due")} for e in accepting)
    assert all(e.accepts.alternatives[("params", "title")][0].startswith("task: ") for e in accepting)
    assert load_experiment(EXPERIMENT).digest != experiment.digest


def test_a_study_ranks_a_terse_right_setting_above_a_verbose_wrong_one(tmp_path, write_config):
    folder = job_with_accept(tmp_path)
    examples = {e.request: e for e in load_experiment(folder).examples}

    def answer(messages, settings):
        example = examples.get(messages[-1]["content"])
        if example is None:                               # the warm-up
            return "{}"
        expected = json.loads(json.dumps(example.expected))
        if settings.prompt_variant == "compact":          # terse: leaves out what it may, in other words
            if example.accepts:
                expected["params"].pop("due")
                expected["params"]["title"] = example.accepts.alternatives[("params", "title")][0]
            return json.dumps(expected)
        expected["success"] = not expected["success"]     # verbose: every field, one of them wrong
        return json.dumps(expected)

    space = {"num_predict": 64, "few_shot": 0, "format": "off",
             "prompt_variant": {"choices": ["compact", "verbose"]}}
    config = load_config(write_config(smoke_config(experiment=str(folder), search_space=space, baseline=None)))
    prepared = prepare_study(config, tracking_uri=f"sqlite:///{tmp_path}/mlflow.db",
                             backend=FakeBackend(answer, per_prompt_char_ms=0.0))
    assert any(e.accepts for e in prepared.examples)  # the study's requests include lines that accept more
    report = run_study(prepared, trials=4, console=Console(file=io.StringIO()))
    by_variant = report.trials.groupby("prompt_variant")["field_accuracy"].max()
    assert by_variant["compact"] == 1.0 and by_variant["verbose"] < 1.0
    best = report.front.sort_values("field_accuracy", ascending=False).iloc[0]
    assert best["prompt_variant"] == "compact"


def write_job(folder, *, scoring: str, schema: dict, lines: list[dict]):
    folder.mkdir()
    (folder / "experiment.yaml").write_text(f"schema: schema.json\nscoring: {scoring}\n")
    (folder / "schema.json").write_text(json.dumps(schema))
    (folder / "dataset.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    return load_experiment(folder)


WEATHER = {"type": "object", "required": ["city"], "additionalProperties": False,
           "properties": {"city": {"type": "string"}, "unit": {"enum": ["celsius", "fahrenheit"], "default": "celsius"},
                          "days": {"type": "integer", "default": 1},
                          "stops": {"type": "array", "items": {"type": "object", "properties": {
                              "at": {"type": "string"}, "note": {"type": "string"}}}}}}


def test_the_manifest_accepts_for_every_line_optional_paths_and_the_schemas_defaults(tmp_path):
    lines = [{"id": "a", "split": "dev", "request": "Paris", "expected": {"city": "Paris", "unit": "celsius", "days": 3,
                                                                           "stops": [{"at": "x", "note": "n"}]}},
             {"id": "b", "split": "dev", "request": "Rome", "expected": {"city": "Rome", "days": 1},
              "accept": {"defaults": {"/days": 2}}}]
    job = write_job(tmp_path / "weather", scoring="{optional: [/stops/*/note], omit_defaults: true}",
                    schema=WEATHER, lines=lines)
    first, second = job.examples
    assert first.accepts.optional == {("stops", "0", "note")}
    assert first.accepts.defaults == {("unit",): "celsius", ("days",): 1}   # city is required: no default
    assert second.accepts.defaults == {("days",): 2}                       # the line's own say first
    scorer = job.scorer
    terse = scorer.score('{"city": "Paris", "days": 3, "stops": [{"at": "x"}]}', first.expected, first.schema,
                         first.accepts)
    assert terse.exact_match  # unit absent means celsius, as expected; the note may be left out
    # absent means the default, judged by its rule: days 3 was expected, the default is 1
    short = scorer.score('{"city": "Paris", "unit": "celsius", "stops": [{"at": "x"}]}', first.expected,
                         first.schema, first.accepts)
    assert {f.path: f.correct for f in short.fields}["/days"] is False
    plain = write_job(tmp_path / "plain", scoring="{}", schema=WEATHER, lines=lines[:1])
    assert not plain.examples[0].accepts


# A function-calling set in the format import-calls reads (written for this test): questions with the functions
# they offer, and per argument the acceptable values, "" meaning it may be left out.
WEATHER_FN = {"name": "get_weather", "description": "Weather forecast",
              "parameters": {"type": "dict", "required": ["city"],
                             "properties": {"city": {"type": "string"},
                                            "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
                                            "days": {"type": "integer"}}}}
AREA_FN = {"name": "triangle_area", "description": "Area of a triangle",
           "parameters": {"type": "dict", "required": ["base", "height"],
                          "properties": {"base": {"type": "float"}, "height": {"type": "float"},
                                         "unit": {"type": "string"}, "corner": {"type": "tuple",
                                                                                "items": {"type": "float"}}}}}
QUESTIONS = [
    {"id": "c1", "question": [[{"role": "user", "content": "Weather in Paris for 3 days?"}]],
     "function": [WEATHER_FN, AREA_FN], "ground_truth": [{"get_weather": {"city": ["Paris", "Paris, France"],
                                                                         "unit": ["celsius", ""], "days": [3]}}]},
    {"id": "c2", "question": "Area of a triangle with base 10 and height 5",
     "function": [AREA_FN], "ground_truth": [{"triangle_area": {"base": [10], "height": [5.0],
                                                                "unit": ["units", ""]}}]},
    {"id": "c3", "question": "Weather in Rome", "function": [WEATHER_FN],
     "ground_truth": [{"get_weather": {"city": ["Rome"], "unit": ["", "celsius", 7]}}]},
    {"id": "c4", "question": "Weather in Oslo and Bergen", "function": [WEATHER_FN],
     "ground_truth": [{"get_weather": {"city": ["Oslo"]}}, {"get_weather": {"city": ["Bergen"]}}]},
    {"id": "c5", "question": "Triangle at (0, 0), base 3, height 4", "function": [AREA_FN],
     "ground_truth": [{"triangle_area": {"base": [3], "height": [4], "corner": [[0.0, 0.0], ""]}}]},
    {"id": "c6", "question": "Weather in Lima in fahrenheit", "function": [WEATHER_FN],
     "ground_truth": [{"get_weather": {"city": ["Lima"], "unit": ["fahrenheit"]}}]},
    {"id": "c7", "question": "Area, base 2 height 2", "function": [AREA_FN],
     "ground_truth": [{"triangle_area": {"base": [2], "height": [2], "sides": [3]}}]},
    {"id": "c8", "question": "Weather in Kyiv", "function": [WEATHER_FN],
     "ground_truth": [{"get_weather": {"city": ["Kyiv", "Kiev"]}}]},
    {"id": "c9", "question": "Area of a triangle of base 4", "function": [AREA_FN],   # a required argument that
     "ground_truth": [{"triangle_area": {"base": [4], "height": [1, ""]}}]},            # may be left out
]


def test_a_function_calling_set_is_imported_as_a_job_that_runs(tmp_path, capsys):
    from pipeline.commands.cli import main
    from pipeline.job.prompts import load_prompts

    source = tmp_path / "calls.jsonl"
    source.write_text("".join(json.dumps(q) + "\n" for q in QUESTIONS))
    assert main(["import-calls", str(source), "--name", "calls", "--root", str(tmp_path), "--few-shot", "1"]) == 0
    said = capsys.readouterr().out
    assert "skipped: 1 not exactly one call, 1 an argument the function does not have" in said
    job = load_experiment(tmp_path / "experiments" / "calls")
    pool = load_prompts(tmp_path / "prompts" / "calls", job).examples
    lines = {e.id: e for e in job.examples}
    assert sorted(lines) == ["c2", "c3", "c5", "c6", "c8", "c9"]     # c1, the first dev line: the few-shot pool
    assert [e.split for e in job.examples].count("holdout") == 3      # 0.4 of 7, by a hash of the ids
    assert [e.answer for e in pool] == [{"name": "get_weather",
                                         "arguments": {"city": "Paris", "unit": "celsius", "days": 3}}]
    assert lines["c8"].accepts.alternatives == {("arguments", "city"): ("Kiev",)}
    assert lines["c2"].expected["arguments"] == {"base": 10, "height": 5.0, "unit": "units"}
    assert lines["c2"].accepts.optional == {("arguments", "unit")}
    # "" first: the first other value is expected; 7 is no unit the enum allows: dropped, with nothing left
    assert lines["c3"].expected["arguments"]["unit"] == "celsius" and not lines["c3"].accepts.alternatives
    assert lines["c3"].accepts.optional == {("arguments", "unit")}
    assert lines["c5"].expected["arguments"]["corner"] == [0.0, 0.0]  # a tuple: an array
    assert ("of 16 arguments, 3 accept other values and 5 may be left out (1 of them required by the function: no "
            "longer); 1 acceptable value the functions' own parameters do not allow dropped") in " ".join(said.split())
    # a required argument the ground truth lets be left out is no longer required by that line's schema
    assert lines["c9"].accepts.optional == {("arguments", "height")}
    assert lines["c9"].schema.document["properties"]["arguments"]["required"] == ["base"]
    # the job runs: a setting that answers tersely (every optional argument left out) is right in every field
    answers = {e.request: e for e in job.examples}

    def answer(messages, settings):
        example = answers.get(messages[-1]["content"])
        if example is None:
            return "{}"
        terse = {k: v for k, v in example.expected["arguments"].items()
                 if ("arguments", k) not in example.accepts.optional}
        return json.dumps({"name": example.expected["name"], "arguments": terse})

    config = load_config(tmp_path / "configs" / "calls.yaml")
    prepared = prepare_study(config, tracking_uri=f"sqlite:///{tmp_path}/mlflow.db",
                             backend=FakeBackend(answer, per_prompt_char_ms=0.0))
    report = run_study(prepared, trials=2, console=Console(file=io.StringIO()))
    assert (report.trials["field_accuracy"] == 1.0).all()
