"""The experiment's data and prompts, and the loaders' checks on them."""

from __future__ import annotations

import json
import shutil
from collections import Counter
from pathlib import Path

import pytest

from pipeline.errors import DataError
from pipeline.experiment import load_experiment
from pipeline.prompts import load_prompts
from pipeline.tokens import estimate_tokens
from tests.conftest import EXPERIMENT, PROMPTS

ACTIONS = ("create_task", "list_tasks", "update_task", "delete_task", "complete_task")


def test_dataset_is_large_balanced_and_split(experiment):
    assert len(experiment.examples) >= 80
    counts = Counter((e.split, e.action) for e in experiment.examples)
    for action in ACTIONS:
        assert counts["dev", action] >= 8 and counts["holdout", action] >= 4


def test_limited_split_takes_actions_in_turn(experiment):
    picked = experiment.split("dev", 7)
    assert [e.action for e in picked[:5]] == list(ACTIONS)
    assert len(picked) == 7 and all(e.split == "dev" for e in picked)
    assert picked == experiment.split("dev", 7)  # fixed: every trial sees the same requests


def test_prompt_variants_differ_in_size(prompts):
    sizes = {name: estimate_tokens([{"role": "system", "content": text}]) for name, text in prompts.variants.items()}
    assert set(sizes) >= {"verbose", "compact", "minimal"}
    assert sizes["verbose"] > 200 > sizes["compact"] > 50 > sizes["minimal"]


def test_pool_has_two_examples_per_action_at_least(prompts):
    counts = Counter(e.action for e in prompts.examples)
    assert all(counts[a] >= 2 for a in ACTIONS)


@pytest.mark.parametrize("request_text, action", [
    ("Please delete task 12", "delete_task"),
    ("mark #3 as done", "complete_task"),
    ("show my open tasks", "list_tasks"),
    ("rename task 2 to budget review", "update_task"),
    ("Call the dentist tomorrow", "create_task"),  # no keyword: the router's default
    ("anything urgent?", "create_task"),  # whole words only: "any" does not match "anything"
])
def test_router_predicts_actions_from_words(prompts, request_text, action):
    assert prompts.route(request_text) == action


def test_rendering_static_and_by_action(prompts):
    static = prompts.render("mark #3 as done", variant="minimal", few_shot=2, selection="static")
    assert [m["role"] for m in static] == ["system", "user", "assistant", "user", "assistant", "user"]
    assert static[0]["content"] == prompts.variants["minimal"] and static[-1]["content"] == "mark #3 as done"
    assert json.loads(static[2]["content"]) == prompts.examples[0].answer
    routed = prompts.render("mark #3 as done", variant="minimal", few_shot=2, selection="by_action")
    assert [json.loads(routed[i]["content"])["action"] for i in (2, 4)] == ["complete_task", "complete_task"]
    assert prompts.render("x", variant="compact", few_shot=0, selection="by_action") == [
        {"role": "system", "content": prompts.variants["compact"]}, {"role": "user", "content": "x"}]


def test_unknown_variant_suggests_the_closest(prompts):
    with pytest.raises(DataError, match="unknown prompt variant 'compakt'. Did you mean 'compact'?"):
        prompts.check_variant("compakt", "study.yaml")


@pytest.fixture
def experiment_copy(tmp_path: Path) -> Path:
    return Path(shutil.copytree(EXPERIMENT, tmp_path / "exp"))


def _append(path: Path, line: str) -> int:
    lines = path.read_text().splitlines()
    path.write_text("\n".join(lines + [line]) + "\n")
    return len(lines) + 1


def test_dataset_line_that_is_not_json_is_named_by_line(experiment_copy):
    number = _append(experiment_copy / "dataset.jsonl", "{not json")
    with pytest.raises(DataError, match=rf"dataset.jsonl:{number}: not JSON"):
        load_experiment(experiment_copy)


def test_expected_answer_that_breaks_the_schema_is_named_by_line(experiment_copy):
    bad = {"id": "bad", "split": "dev", "request": "x", "expected": {"action": "fly", "params": {}, "success": True}}
    number = _append(experiment_copy / "dataset.jsonl", json.dumps(bad))
    with pytest.raises(DataError, match=rf"dataset.jsonl:{number}: expected answer violates schema.json"):
        load_experiment(experiment_copy)


def test_duplicate_id_and_unknown_split(experiment_copy):
    path = experiment_copy / "dataset.jsonl"
    first = json.loads(path.read_text().splitlines()[0])
    number = _append(path, json.dumps(first))
    with pytest.raises(DataError, match=rf":{number}: id 't001' must be a unique string"):
        load_experiment(experiment_copy)
    path.write_text(path.read_text().replace('"split": "holdout"', '"split": "test"', 1))
    with pytest.raises(DataError, match="split 'test' must be one of dev, holdout"):
        load_experiment(experiment_copy)


def test_invalid_schema(experiment_copy):
    (experiment_copy / "schema.json").write_text(json.dumps({"type": "objekt"}))
    with pytest.raises(DataError, match="schema.json: invalid JSON Schema at type"):
        load_experiment(experiment_copy)
    (experiment_copy / "schema.json").write_text("{")
    with pytest.raises(DataError, match="schema.json:1: not valid JSON"):
        load_experiment(experiment_copy)


def test_bad_prompt_folder(tmp_path, experiment):
    folder = Path(shutil.copytree(PROMPTS, tmp_path / "prompts"))
    (folder / "examples.jsonl").write_text('{"request": "x", "answer": {"action": "create_task"}}\n')
    with pytest.raises(DataError, match="examples.jsonl:1: example answer violates the schema"):
        load_prompts(folder, experiment.validator())
    (folder / "compact.txt").write_text("  \n")
    with pytest.raises(DataError, match="compact.txt: empty system prompt"):
        load_prompts(folder, experiment.validator())
