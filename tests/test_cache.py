"""The exact response cache: its key covers everything that makes an answer, a hit is the kept answer timed by the
cache alone, the traffic's order decides the first miss, labels the manifest never caches always reach the engine,
and a trial of the real embedded model through it."""

from __future__ import annotations

import io
import json
import threading
from pathlib import Path

import pandas as pd
import pytest
from rich.console import Console

from pipeline.cache.exact import ExactCache, answer_label, request_key
from pipeline.cache.serving import from_sidecar
from pipeline.engines.settings import InferenceSettings
from pipeline.errors import DataError
from pipeline.job.experiment import load_experiment
from pipeline.job.prompts import load_prompts
from pipeline.measure.metrics import summarize
from pipeline.measure.runner import run_trial
from pipeline.promote.promotion import PromotionPolicy, promote
from pipeline.render.tables import front_summary, front_table
from pipeline.search.config import load_config
from pipeline.search.fronts import SETTINGS
from pipeline.search.prepare import prepare_study
from pipeline.search.study import run_study
from pipeline.testing import FakeBackend, answers_by_request
from tests.conftest import EXPERIMENT, PROMPTS, ROOT, notes_job, plan, smoke_config
from tests.conftest import NOTES_SCHEMA as SCHEMA


def settings(cache: str = "exact", **changes) -> InferenceSettings:
    base = {"num_ctx": 1024, "num_predict": 64, "temperature": 0.0, "top_p": 1.0, "top_k": 40, "few_shot": 0,
            "prompt_variant": "plain", "example_selection": "static", "format": "schema",
            "serving": (("cache", cache),)}
    return InferenceSettings(**{**base, **changes})


def trial(folder: Path, chosen: InferenceSettings, answer=None):
    """One trial of the notes job over its dev traffic; the backend answers right unless told otherwise."""
    experiment = load_experiment(folder)
    right = answers_by_request({e.request: e.expected for e in experiment.requests})
    backend = FakeBackend(answer or right)
    prompts = load_prompts(folder / "prompts", experiment)
    outcome = run_trial(chosen, experiment.split("dev"),
                        plan(experiment, prompts, backend, never_cache=experiment.never_cache))
    return outcome, backend


def engine_calls(backend: FakeBackend) -> list[str]:
    return [messages[-1]["content"] for messages in backend.calls][1:]  # the first is the untimed warm-up


# --- the cache itself ---------------------------------------------------------------------------------------------


MESSAGES = [{"role": "system", "content": "A"}, {"role": "user", "content": "hi"}]


def test_the_key_covers_messages_schema_settings_and_model_and_not_the_cache_setting():
    params = settings().as_params()
    key = request_key(MESSAGES, {"type": "object"}, params, "m@1")
    others = [
        request_key(MESSAGES, {"type": "object"}, settings(temperature=0.7).as_params(), "m@1"),
        request_key(MESSAGES, {"type": "object"}, settings(format="json").as_params(), "m@1"),
        request_key(MESSAGES, {"type": "object"}, settings(seed=1).as_params(), "m@1"),
        request_key(MESSAGES, {"type": "array"}, params, "m@1"),
        request_key([{"role": "system", "content": "B"}, MESSAGES[1]], {"type": "object"}, params, "m@1"),
        request_key([MESSAGES[0], {"role": "user", "content": "x"}, {"role": "assistant", "content": "{}"},
                     MESSAGES[1]], {"type": "object"}, params, "m@1"),  # a few-shot pair more
        request_key(MESSAGES, {"type": "object"}, params, "m@2"),  # the same name, another file
    ]
    assert len({key, *others}) == len(others) + 1
    # the cache's own setting is not part of what makes an answer
    assert request_key(MESSAGES, {"type": "object"}, settings("off").as_params(), "m@1") == key


def test_a_hit_returns_the_kept_answer_and_is_timed():
    cache = ExactCache()
    calls: list[int] = []

    def generate() -> str:
        calls.append(1)
        return '{"op": "read", "note": "a"}'

    first, missed = cache.serve(MESSAGES, SCHEMA, {"temperature": 0}, "m", generate)
    second, hit = cache.serve(MESSAGES, SCHEMA, {"temperature": 0}, "m", generate)
    assert first == second and len(calls) == 1 and missed.answer is None and hit.answer == first
    assert hit.ms > 0 and missed.ms > 0  # hashing and lookup cost something, hit or miss
    other, _ = cache.serve(MESSAGES, SCHEMA, {"temperature": 0.5}, "m", generate)
    assert len(calls) == 2  # other settings: the engine answers


def test_only_answers_that_follow_the_schema_are_kept():
    cache = ExactCache()
    for text in ("not json", '{"op": "delete", "note": "a"}'):
        cache.serve(MESSAGES, SCHEMA, {}, "m", lambda text=text: text)
    assert len(cache) == 0
    cache.serve(MESSAGES, None, {}, "m", lambda: '{"any": 1}')  # no schema: any JSON
    assert len(cache) == 1


def test_labels_never_cached_are_never_kept():
    cache = ExactCache(never={"secret"}, label="/op")
    assert not cache.store("k1", '{"op": "secret", "note": "x"}') and cache.store("k2", '{"op": "read", "note": "x"}')
    assert len(cache) == 1
    with pytest.raises(ValueError, match="label path"):
        ExactCache(never={"secret"})
    assert answer_label('{"op": "read"}', "/op") == "read" and answer_label('{"n": 3}', "/n") == "3"
    assert answer_label("not json", "/op") is None and answer_label('{"x": 1}', "/op") is None


def test_the_cache_is_shared_safely_between_threads():
    cache = ExactCache()
    keys = [f"k{i}" for i in range(200)]

    def fill(part: list[str]) -> None:
        for key in part:
            cache.store(key, '{"op": "read", "note": "x"}')

    threads = [threading.Thread(target=fill, args=(keys[i::4],)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(cache) == 200


# --- a trial through the cache ------------------------------------------------------------------------------------


def test_the_traffic_order_decides_the_first_miss_and_hits_are_timed_by_the_cache_alone(tmp_path):
    folder = notes_job(tmp_path / "job", traffic=[{"repeat": "r1"}, {"repeat": "r1"}, {"repeat": "w1"},
                                                   {"repeat": "r1"}, {"repeat": "w1"}])
    outcome, backend = trial(folder, settings())
    assert engine_calls(backend) == ["read note alpha", "write note alpha"]
    assert [r.cache for r in outcome.records] == ["", "exact", "", "exact", "exact"]
    hits = [r for r in outcome.records if r.cache]
    assert all(r.cache_ms is not None and 0 < r.cache_ms == r.latency_ms < 5 for r in hits)
    misses = [r for r in outcome.records if not r.cache]
    assert all(r.latency_ms >= 20 + r.cache_ms > 20 for r in misses)  # the engine's time and the lookup's
    metrics = summarize(outcome.records)
    assert metrics["cache_hit_rate"] == 3 / 5 and metrics["engine_requests_saved"] == 3
    assert metrics["field_accuracy"] == 1.0  # of the served answers, hits included
    # the same traffic with the cache off: every request reaches the engine, no cache metric
    outcome, backend = trial(folder, settings("off"))
    assert len(engine_calls(backend)) == 5 and "cache_hit_rate" not in summarize(outcome.records)
    assert all(r.cache == "" and r.cache_ms is None for r in outcome.records)


def test_a_wrong_answer_once_kept_is_served_to_every_later_hit(tmp_path):
    folder = notes_job(tmp_path / "job", traffic=[{"repeat": "r1"}] * 3 + [{"repeat": "w1"}] * 2)

    def answer(messages, _settings):
        text = messages[-1]["content"]
        return '{"op": "read", "note": "wrong"}' if text.startswith("read") else "not json"

    outcome, _ = trial(folder, settings(), answer)
    assert [r.cache for r in outcome.records] == ["", "exact", "exact", "", ""]  # an invalid answer is not kept
    assert [r.score.field_accuracy for r in outcome.records[:3]] == [0.5] * 3  # scored for the request served


def test_a_label_never_cached_always_reaches_the_engine(tmp_path):
    traffic = [{"repeat": "s1"}, {"repeat": "r1"}, {"repeat": "s1"}, {"repeat": "r1"}, {"repeat": "s1"}]
    outcome, backend = trial(notes_job(tmp_path / "job", traffic=traffic, cache={"never": ["secret"]}), settings())
    assert engine_calls(backend).count("tell the secret beta") == 3
    assert [r.cache for r in outcome.records] == ["", "", "", "exact", ""]
    outcome, backend = trial(notes_job(tmp_path / "plain", traffic=traffic), settings())
    assert engine_calls(backend).count("tell the secret beta") == 1


def test_two_settings_never_share_an_entry(tmp_path):
    # one cache for both (a trial has its own; this shows the key alone keeps them apart)
    folder = notes_job(tmp_path / "job", traffic=[{"repeat": "r1"}])
    experiment = load_experiment(folder)
    prompts = load_prompts(folder / "prompts", experiment)
    cache = ExactCache()
    for chosen in (settings(), settings(temperature=0.5), settings(few_shot=1)):
        request = prompts.render("read note alpha", variant="plain", few_shot=chosen.few_shot, selection="static")
        assert cache.lookup(request, SCHEMA, chosen.as_params(), "m").answer is None
        cache.store(cache.lookup(request, SCHEMA, chosen.as_params(), "m").key, '{"op": "read", "note": "alpha"}')
    assert len(cache) == 3


@pytest.mark.parametrize(("cache", "message"), [
    ({"never": ["secrets"]}, "names 'secrets', which no request of the dataset or the traffic has. Did you mean "
                             "'secret'?"),
    ({"nver": ["secret"]}, "(cache): unknown key 'nver'"),
    (["secret"], "'cache' must be a mapping"),
    ({"never": "secret"}, "cache.never must be a list of labels"),
])
def test_a_bad_cache_section_is_one_line_naming_the_manifest(tmp_path, cache, message):
    with pytest.raises(DataError, match="experiment.yaml") as raised:
        load_experiment(notes_job(tmp_path / "job", traffic=[{"repeat": "r1"}], cache=cache))
    assert message in str(raised.value) and "\n" not in str(raised.value)


# --- the real model through the cache -----------------------------------------------------------------------------


def test_the_embedded_model_through_the_cache_answers_each_repeat_as_it_first_did(engine):
    # the Task API's dev traffic, its first 24 arrivals: "List all tasks" again and again
    experiment = load_experiment(EXPERIMENT)
    prompts = load_prompts(PROMPTS, experiment)
    arrivals = experiment.split("dev", None)[:24]
    chosen = settings(num_ctx=1024, num_predict=48, few_shot=2, prompt_variant="compact")
    outcome = run_trial(chosen, arrivals, plan(experiment, prompts, engine))
    by_request: dict[str, str] = {}
    for record in outcome.records:
        if record.cache:
            assert record.answer == by_request[record.request] and record.decode_tokens is None
        elif record.score.schema_valid:
            by_request.setdefault(record.request, record.answer)
    hits = [r for r in outcome.records if r.cache]
    assert len(hits) >= 6, [r.request for r in outcome.records]
    assert max(r.latency_ms for r in hits) < min(r.latency_ms for r in outcome.records if not r.cache)


# --- a study that searches the cache, and the bundle that serves with it ------------------------------------------


def test_a_study_searches_the_cache_and_promote_writes_it_while_the_check_bypasses_it(tmp_path, write_config,
                                                                                       capsys):
    experiment = load_experiment(EXPERIMENT)
    right = answers_by_request({e.request: e.expected for e in experiment.requests})
    fixed = {"num_ctx": 1024, "num_predict": 64, "temperature": 0.0, "top_p": 1.0, "top_k": 40, "few_shot": 2,
             "prompt_variant": "compact", "example_selection": "static", "format": "schema"}
    config = write_config(smoke_config(
        study={"name": "cached", "trials": 2}, evaluation={"traffic": True, "limit": 30, "stages": []},
        constraints={}, search_space={**fixed, "cache": {"choices": ["off", "exact"]}},
        baseline={**fixed, "cache": "off"}))
    backend = FakeBackend(right)
    prepared = prepare_study(load_config(config), tracking_uri=f"sqlite:///{tmp_path}/mlflow.db", backend=backend)
    report = run_study(prepared, trials=2, console=Console(file=io.StringIO()))
    trials = report.trials.set_index("cache")
    assert set(trials.index) == {"off", "exact"}, report.trials
    assert pd.isna(trials.loc["off", "cache_hit_rate"]) and trials.loc["exact", "cache_hit_rate"] > 0.3
    assert trials.loc["exact", "latency_p50_ms"] < trials.loc["off", "latency_p50_ms"] / 3
    out = Console(file=io.StringIO(), width=100)
    for shown in (front_summary, front_table):  # both name the setting and show its hits
        out.print(shown(report.trials, "all", settings=SETTINGS, trials=report.trials))
    assert out.file.getvalue().count("cache") >= 2 and out.file.getvalue().count("hits") == 2
    cached = int(trials.loc["exact", "number"])
    backend = FakeBackend(right)
    prepared = prepare_study(load_config(config), tracking_uri=f"sqlite:///{tmp_path}/mlflow.db", backend=backend)
    promoted = promote(prepared, "cached", PromotionPolicy("trial", trial=cached, repetitions=1, check_requests=5,
                                                           output=tmp_path / "out"))
    sidecar = json.loads((tmp_path / "out" / "promotion.json").read_text())
    assert sidecar["cache"] == {"mode": "exact", "never": [], "label": "/action"}
    assert isinstance(from_sidecar(sidecar), ExactCache) and from_sidecar({"format": "json"}) is None
    # the check replayed its 5 held-out requests through the engine, the repeat among them too (none from a cache)
    assert promoted.check.requests == 5 and promoted.check.failure is None
    replayed = [e.request for e in experiment.split("holdout")[:5]]
    assert len(set(replayed)) < 5 and [m[-1]["content"] for m in backend.calls[-5:]] == replayed


def test_the_shipped_traffic_config_searches_the_cache_over_the_first_arrivals(tmp_path):
    config = load_config(ROOT / "configs" / "task_api_traffic.yaml")
    prepared = prepare_study(config, tracking_uri=f"sqlite:///{tmp_path}/mlflow.db", backend=FakeBackend())
    assert [e.id for e in prepared.examples] == [e.id for e in load_experiment(EXPERIMENT).traffic["dev"][:40]]
    assert config.search_space["cache"].choices == ("off", "exact")
