"""The shipped experiments' data and prompts: every one loads, is large and balanced enough, and is split."""

from __future__ import annotations

import json
from collections import Counter

import pytest

from pipeline.engines.tokens import estimate_tokens
from pipeline.job.experiment import load_experiment
from pipeline.job.prompts import load_prompts
from pipeline.search.config import load_config
from pipeline.search.prepare import job_defaults, warmup_example
from tests.conftest import ROOT

ACTIONS = ("create_task", "list_tasks", "update_task", "delete_task", "complete_task")
SHIPPED = ("task_api", "tickets", "invoices")


@pytest.fixture(scope="module", params=SHIPPED)
def shipped(request):
    experiment = load_experiment(ROOT / "experiments" / request.param)
    prompts = load_prompts(ROOT / "prompts" / request.param, experiment)
    return request.param, experiment, prompts


def test_every_shipped_experiment_loads_with_its_config(shipped):
    name, experiment, prompts = shipped
    config = job_defaults(load_config(ROOT / "configs" / f"{name}.yaml"), experiment, prompts)
    assert config.experiment == experiment.folder and config.study.name == name
    counts = Counter(e.split for e in experiment.examples)
    assert counts["dev"] >= (60 if name == "task_api" else 40)
    assert counts["holdout"] >= 20
    assert len(experiment.examples) >= 60 and len(prompts.variants) >= 2 and prompts.examples
    assert "labelling rules" in (experiment.folder / "README.md").read_text().lower()
    # the quality objective is correctness; validity is a constraint
    assert config.objectives[0].metric in ("field_accuracy", "exact_match_rate")
    assert any(c.metric == "schema_valid_rate" and c.min is not None for c in config.constraints)
    # every request's prompt fits the config's largest context with the largest few-shot count
    space = config.search_space
    shots = max(space["few_shot"].choices or (space["few_shot"].high,))
    biggest = max(space["num_ctx"].choices) - max(space["num_predict"].choices)
    for example in experiment.examples:
        messages = prompts.render(example.request, variant=max(prompts.variants, key=lambda v: len(
            prompts.variants[v])), few_shot=int(shots), selection="static")
        assert estimate_tokens(messages) * 1.1 <= biggest, example.id
    assert warmup_example(experiment, prompts).request not in {e.request for e in experiment.examples}


def test_few_shot_pool_is_not_in_the_dataset(shipped):
    _, experiment, prompts = shipped
    assert not {e.request for e in prompts.examples} & {e.request for e in experiment.examples}


def test_task_api_is_balanced_over_its_label(experiment):
    counts = Counter((e.split, e.label) for e in experiment.examples)
    for action in ACTIONS:
        assert counts["dev", action] >= 8 and counts["holdout", action] >= 4
    assert experiment.label_values == ACTIONS


def test_tickets_is_a_flat_classification():
    experiment = load_experiment(ROOT / "experiments" / "tickets")
    properties = experiment.schema.document["properties"]
    assert {"enum"} <= set(properties["category"]) and properties["needs_human"]["type"] == "boolean"
    assert "summary" not in experiment.schema.document["required"]  # an optional free-text field
    assert experiment.field_paths == ("/category", "/priority", "/needs_human")
    counts = Counter(e.label for e in experiment.examples if e.split == "dev")
    assert len(counts) == 5 and min(counts.values()) >= 8


def test_invoices_is_a_nested_extraction_with_unordered_items():
    experiment = load_experiment(ROOT / "experiments" / "invoices")
    assert experiment.label is None
    assert "/line_items/*/unit_price" in experiment.field_paths and "/vendor/name" in experiment.field_paths
    example = next(e for e in experiment.examples if len(e.expected["line_items"]) >= 3)
    reordered = {**example.expected, "line_items": example.expected["line_items"][::-1]}
    result = experiment.scorer.score(json.dumps(reordered), example.expected, example.schema)
    assert result.exact_match  # items in another order are the same answer
    dropped = {**example.expected, "line_items": example.expected["line_items"][1:]}
    assert not experiment.scorer.score(json.dumps(dropped), example.expected, example.schema).exact_match
    # without a label, a limited split is the file's first lines
    assert [e.id for e in experiment.split("dev", 3)] == [e.id for e in experiment.examples if e.split == "dev"][:3]


def test_limited_split_takes_labels_in_turn(experiment):
    picked = experiment.split("dev", 7)
    assert [e.label for e in picked[:5]] == list(ACTIONS)
    assert len(picked) == 7 and all(e.split == "dev" for e in picked)
    assert picked == experiment.split("dev", 7)  # fixed: every trial sees the same requests


def test_prompt_variants_differ_in_size(prompts):
    sizes = {name: estimate_tokens([{"role": "system", "content": text}]) for name, text in prompts.variants.items()}
    assert set(sizes) >= {"verbose", "compact", "minimal"}
    assert sizes["verbose"] > 200 > sizes["compact"] > 50 > sizes["minimal"]


def test_pool_has_two_examples_per_label_at_least(prompts):
    counts = Counter(e.label for e in prompts.examples)
    assert all(counts[a] >= 2 for a in ACTIONS)


@pytest.mark.parametrize("request_text, action", [
    ("Please delete task 12", "delete_task"),
    ("mark #3 as done", "complete_task"),
    ("show my open tasks", "list_tasks"),
    ("rename task 2 to budget review", "update_task"),
    ("Call the dentist tomorrow", "create_task"),  # no keyword: the router's default
    ("anything urgent?", "create_task"),  # whole words only: "any" does not match "anything"
])
def test_router_predicts_labels_from_words(prompts, request_text, action):
    assert prompts.route(request_text) == action


def test_rendering_static_and_by_label(prompts):
    static = prompts.render("mark #3 as done", variant="minimal", few_shot=2, selection="static")
    assert [m["role"] for m in static] == ["system", "user", "assistant", "user", "assistant", "user"]
    assert static[0]["content"] == prompts.variants["minimal"] and static[-1]["content"] == "mark #3 as done"
    assert json.loads(static[2]["content"]) == prompts.examples[0].answer
    routed = prompts.render("mark #3 as done", variant="minimal", few_shot=2, selection="by_label")
    assert [json.loads(routed[i]["content"])["action"] for i in (2, 4)] == ["complete_task", "complete_task"]
    assert prompts.render("x", variant="compact", few_shot=0, selection="by_label") == [
        {"role": "system", "content": prompts.variants["compact"]}, {"role": "user", "content": "x"}]


def test_tickets_router_and_template():
    experiment = load_experiment(ROOT / "experiments" / "tickets")
    prompts = load_prompts(ROOT / "prompts" / "tickets", experiment)
    example = experiment.examples[0]
    assert example.request.startswith(f"From: {example.fields['customer']} ({example.fields['plan']} plan)\n")
    routed = sum(prompts.route(e.request) == e.label for e in experiment.examples)
    assert routed / len(experiment.examples) >= 0.6  # the router beats chance (0.2) by far
