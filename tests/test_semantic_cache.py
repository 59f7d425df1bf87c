"""The semantic cache: the real embedding model (against the full-precision model's own vectors), the guard on the
literal parts an answer depends on (on a job that is not the Task API), false hits counted, and a study that
searches the threshold through to the bundle that names it."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from rich.console import Console

from pipeline.cache.embedder import load_embedder
from pipeline.cache.guard import agrees, schema_words
from pipeline.cache.semantic import SemanticCache
from pipeline.cache.served import ServerEmbedder
from pipeline.cache.serving import from_sidecar
from pipeline.engines.embedded import bundled_model_path
from pipeline.engines.process import ServerProcess, find_binary
from pipeline.engines.settings import InferenceSettings
from pipeline.errors import InputError
from pipeline.job.experiment import load_experiment
from pipeline.job.prompts import load_prompts
from pipeline.measure.metrics import summarize
from pipeline.measure.runner import run_trial
from pipeline.promote.promotion import PromotionPolicy, promote
from pipeline.search.config import load_config
from pipeline.search.prepare import prepare_study
from pipeline.search.snapshot import open_for_promotion
from pipeline.search.study import run_study
from pipeline.testing import FakeBackend, answers_by_request
from pipeline.testing.ollama_double import OllamaDouble
from tests.conftest import EXPERIMENT, NOTES_SCHEMA, ROOT, notes_job, plan, smoke_config

REFERENCE = json.loads((Path(__file__).parent / "fixtures" / "minilm_reference.json").read_text())


@pytest.fixture(scope="module")
def embedder():
    return load_embedder()[0]


def settings(threshold: float = 0.8, guard: str = "on", **changes) -> InferenceSettings:
    base = {"num_ctx": 1024, "num_predict": 64, "temperature": 0.0, "top_p": 1.0, "top_k": 40, "few_shot": 0,
            "prompt_variant": "plain", "example_selection": "static", "format": "schema",
            "serving": (("cache", "semantic"), ("cache_threshold", threshold), ("cache_guard", guard))}
    return InferenceSettings(**{**base, **changes})


# --- the embedder ----------------------------------------------------------------------------------------------


def test_the_int8_model_gives_the_full_precision_models_vectors(embedder):
    # the reference: sentence-transformers on torch, fp32 (REFERENCE["made_by"])
    for text, vector in zip(REFERENCE["texts"], REFERENCE["vectors"]):
        ours = embedder.embed(text)
        assert ours.shape == (384,) and abs(float(np.linalg.norm(ours)) - 1) < 1e-5
        assert float(ours @ np.array(vector, np.float32)) > 0.999, text
    # what no threshold separates: a paraphrase below a look-alike that needs another answer
    paraphrase = embedder.embed("List all my tasks") @ embedder.embed("show every task")
    look_alike = embedder.embed("Review PR #42") @ embedder.embed("Review PR #43")
    assert paraphrase < 0.85 < look_alike


def test_the_embedder_writes_nothing_under_the_home_directory(tmp_path):
    code = "from pipeline.cache.embedder import load_embedder; load_embedder()[0].embed('List all tasks')"
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env={**os.environ, "HOME": str(tmp_path)},
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert list(tmp_path.iterdir()) == []  # onnxruntime's telemetry folder is not made


# --- the guard ------------------------------------------------------------------------------------------------


def test_the_guard_reads_the_schemas_words_the_numbers_and_what_the_answer_copies():
    assert schema_words(NOTES_SCHEMA) == {"read", "write", "secret"}
    read = {"op": "read", "note": "alpha"}
    assert agrees("please read note alpha", "read note alpha", read, NOTES_SCHEMA) is None
    assert agrees("write note alpha", "read note alpha", read, NOTES_SCHEMA) == "word of the schema 'read'"
    assert agrees("read note beta", "read note alpha", read, NOTES_SCHEMA) == "the answer's 'alpha'"
    assert agrees("read note 8", "read note 7", {"op": "read", "note": "7"}, NOTES_SCHEMA) == \
        "number or identifier '7'"
    assert agrees('read the note "b c"', 'read the note "a c"', read, NOTES_SCHEMA) == "quoted text 'a c'"


# --- a trial through the semantic cache -----------------------------------------------------------------------


LOOK_ALIKES = [
    {"id": "p1", "split": "dev", "text": "please read note alpha", "expected": {"op": "read", "note": "alpha"}},
    {"id": "p2", "split": "dev", "text": "read note alpha2", "expected": {"op": "read", "note": "alpha2"}},
]


def trial(folder: Path, chosen: InferenceSettings):
    experiment = load_experiment(folder)
    backend = FakeBackend(answers_by_request({e.request: e.expected for e in experiment.requests}))
    prompts = load_prompts(folder / "prompts", experiment)
    return run_trial(chosen, experiment.split("dev"), plan(experiment, prompts, backend)), backend


def test_a_look_alike_above_the_threshold_is_a_false_hit_and_the_guard_refuses_it(tmp_path, embedder):
    # "read note alpha2" is closer to "read note alpha" than the threshold: without the guard it is served
    # alpha's answer, wrong for it and right for alpha (a false hit); the paraphrase is a true hit either way
    assert embedder.embed("read note alpha2") @ embedder.embed("read note alpha") > 0.8
    folder = notes_job(tmp_path / "job", traffic=[{"repeat": "r1"}, *LOOK_ALIKES])
    outcome, _ = trial(folder, settings(guard="off"))
    # the first arrival went through the meaning lookup and could have been served another's answer: at risk
    assert [(r.cache, r.false_hit) for r in outcome.records] == [("", False), ("semantic", False),
                                                                  ("semantic", True)]
    hits = [r for r in outcome.records if r.cache]
    assert all(0 < r.cache_ms == r.latency_ms for r in hits)  # the embedding and the search, timed
    metrics = summarize(outcome.records)
    assert metrics["false_hit_rate"] == 1 / 3 and metrics["cache_hit_rate"] == 2 / 3
    outcome, backend = trial(folder, settings(guard="on"))
    assert [(r.cache, r.false_hit) for r in outcome.records] == [("", False), ("semantic", False), ("", False)]
    assert backend.calls[-1][-1]["content"] == "read note alpha2"  # the guard sent it to the engine
    assert summarize(outcome.records)["false_hit_rate"] == 0


def test_a_threshold_above_every_look_alike_serves_only_exact_repeats(tmp_path, embedder):
    folder = notes_job(tmp_path / "job", traffic=[{"repeat": "r1"}, *LOOK_ALIKES, {"repeat": "r1"}])
    outcome, _ = trial(folder, settings(threshold=1.0, guard="off"))
    assert [r.cache for r in outcome.records] == ["", "", "", "exact"]
    assert [r.false_hit for r in outcome.records] == [False, False, False, None]  # an exact hit is never at risk


def test_a_semantic_cache_refuses_a_threshold_outside_0_1(embedder):
    with pytest.raises(ValueError, match=r"\(0, 1\]"):
        SemanticCache(embedder, threshold=0.0)


# --- a study that searches the threshold ----------------------------------------------------------------------


def test_a_false_hit_limit_no_trial_can_show_is_explained_and_a_setting_without_a_cache_meets_it(tmp_path,
                                                                                                   write_config):
    # no false hit over 30 arrivals is no evidence of at most 1% (the interval's upper end is a few percent)
    config = write_config(smoke_config(
        study={"name": "strict", "trials": 2, "sampler": "random"},
        evaluation={"traffic": True, "limit": 30, "stages": []}, constraints={"false_hit_rate": {"max": 0.01}},
        search_space={"num_ctx": 1024, "num_predict": 64, "few_shot": 2, "prompt_variant": "compact",
                      "format": "schema", "cache": "semantic", "cache_threshold": 0.9}))
    right = answers_by_request({e.request: e.expected for e in load_experiment(EXPERIMENT).requests})
    prepared = prepare_study(load_config(config), tracking_uri=f"sqlite:///{tmp_path}/mlflow.db",
                             backend=FakeBackend(right))
    report = run_study(prepared, trials=1, console=Console(file=io.StringIO()))
    assert report.front.empty and (report.trials["false_hit_rate"] == 0).all()
    broken = next(line for line in report.explanation if line.startswith("false_hit_rate <= 0.01"))
    assert "broken by 1 of 1 trials, the closest reached 0.0" in broken and "upper end" in broken
    assert "longer traffic" in broken
    # the same study without a cache: nothing served from one, so nothing served wrong by one
    config = write_config(smoke_config(
        study={"name": "none", "trials": 1}, evaluation={"traffic": True, "limit": 30, "stages": []},
        constraints={"false_hit_rate": {"max": 0.01}}, search_space={"num_ctx": 1024, "cache": "off"}))
    prepared = prepare_study(load_config(config), tracking_uri=f"sqlite:///{tmp_path}/mlflow.db",
                             backend=FakeBackend(right))
    report = run_study(prepared, trials=1, console=Console(file=io.StringIO()))
    assert len(report.front) == 1 and "false_hit_rate" not in report.trials


def test_a_study_searches_the_threshold_and_promote_writes_the_cache_settings(tmp_path, write_config):
    experiment = load_experiment(EXPERIMENT)
    right = answers_by_request({e.request: e.expected for e in experiment.requests})
    fixed = {"num_ctx": 1024, "num_predict": 64, "temperature": 0.0, "top_p": 1.0, "top_k": 40, "few_shot": 2,
             "prompt_variant": "compact", "example_selection": "static", "format": "schema", "cache": "semantic",
             "cache_guard": "on"}
    config = write_config(smoke_config(
        study={"name": "meaning", "trials": 3}, evaluation={"traffic": True, "limit": 30, "stages": []},
        constraints={"false_hit_rate": {"max": 0.15}},
        search_space={**fixed, "cache_threshold": {"choices": [0.8, 0.95]}}))
    prepared = prepare_study(load_config(config), tracking_uri=f"sqlite:///{tmp_path}/mlflow.db",
                             backend=FakeBackend(right))
    report = run_study(prepared, trials=3, console=Console(file=io.StringIO()))
    trials = report.trials
    assert set(trials["cache_threshold"]) == {0.8, 0.95}, trials
    assert (trials["cache_hit_rate"] > 0.3).all() and "false_hit_rate" in trials
    # the limit is judged at the false-hit rate's upper end (no false hit over 30 arrivals is not 0 for certain)
    views = {t.number: t for t in open_for_promotion(prepared, "meaning").trials}
    for row in trials.itertuples():
        assert row.false_hit_rate == 0 < row.false_hit_rate_ci95_high < 0.15
        assert views[row.number].constraints["false_hit_rate"] == pytest.approx(row.false_hit_rate_ci95_high - 0.15)
    chosen = int(trials.sort_values("cache_hit_rate").iloc[-1]["number"])
    prepared = prepare_study(load_config(config), tracking_uri=f"sqlite:///{tmp_path}/mlflow.db",
                             backend=FakeBackend(right))
    promote(prepared, "meaning", PromotionPolicy("trial", trial=chosen, repetitions=1, check_requests=4,
                                                 output=tmp_path / "out"))
    sidecar = json.loads((tmp_path / "out" / "promotion.json").read_text())
    assert sidecar["cache"] == {"mode": "semantic", "never": [], "label": "/action", "guard": "on",
                                "threshold": float(trials.set_index("number").loc[chosen, "cache_threshold"]),
                                "embedder": "all-MiniLM-L6-v2-onnx-int8"}
    served = from_sidecar(sidecar)
    assert isinstance(served, SemanticCache) and served.threshold == sidecar["cache"]["threshold"]


def test_the_bundle_check_replays_only_what_the_engine_answered_not_another_requests_answer(tmp_path,
                                                                                           write_config):
    # held out: "read note gamma", then its look-alike "read note gamma2", served gamma's answer without the guard
    gamma2 = {"id": "g2", "split": "holdout", "text": "read note gamma2", "expected": {"op": "read", "note": "gamma2"}}
    folder = notes_job(tmp_path / "job", traffic=[{"repeat": "r1"}, {"repeat": "w1"}, {"repeat": "r2"}, gamma2])
    experiment = load_experiment(folder)
    right = answers_by_request({e.request: e.expected for e in experiment.requests})
    config = write_config(smoke_config(
        experiment=str(folder), prompts=str(folder / "prompts"), study={"name": "notes", "trials": 1},
        evaluation={"traffic": True, "limit": None, "stages": []}, objectives=[{"metric": "field_accuracy"}],
        search_space={"num_ctx": 1024, "few_shot": 0, "prompt_variant": "plain", "format": "schema",
                      "cache": "semantic", "cache_threshold": 0.8, "cache_guard": "off"}))
    prepared = prepare_study(load_config(config), tracking_uri=f"sqlite:///{tmp_path}/mlflow.db",
                             backend=FakeBackend(right))
    run_study(prepared, trials=1, console=Console(file=io.StringIO()))
    report = promote(prepared, "notes", PromotionPolicy("trial", trial=0, repetitions=1, check_requests=2,
                                                        output=tmp_path / "out"))
    held = json.loads((tmp_path / "out" / "promotion.json").read_text())["cache"]
    assert held["guard"] == "off" and report.holdout["false_hit_rate"] == 0.5  # gamma2 got gamma's answer
    # gamma2's answer in the trial was gamma's: replaying it through the engine would differ, and prove nothing
    assert report.check.requests == 1 and report.check.failure is None
    assert [row["request_id"] for row in report.check.rows] == ["r2"]


# --- a server's own embedding model ---------------------------------------------------------------------------


def test_ollamas_embed_endpoint_serves_the_cache_and_a_model_it_cannot_embed_with_is_refused(embedder):
    # all-MiniLM-L6-v2 served as Ollama serves `all-minilm`: the same vectors as in process
    with OllamaDouble(embedders={"all-minilm": embedder}) as server:
        served = ServerEmbedder(server.url, "all-minilm", "ollama")
        for text in ("List all tasks", "Review PR #42"):
            assert float(served.embed(text) @ embedder.embed(text)) > 0.9999
        assert served.name == "ollama:all-minilm"
        served.check("study.yaml (engine.embed_model)")
        body = server.requests[-1]["body"]
        assert server.requests[-1]["path"] == "/api/embed" and body == {"model": "all-minilm", "input": "a probe"}
        # a model the server lacks (404), and its chat model, which Ollama does not start for embeddings (501)
        with pytest.raises(InputError, match=r"^study.yaml \(engine.embed_model\): model 'nomic' does not embed at "
                                             r"http://127.0.0.1:\d+ \(.*answered 404: model 'nomic' not found\); "
                                             r"pull it \(ollama pull nomic\)"):
            ServerEmbedder(server.url, "nomic", "ollama").check("study.yaml (engine.embed_model)")
        with pytest.raises(InputError, match="answered 501: This server does not support embeddings"):
            ServerEmbedder(server.url, "tuned", "ollama").check("study.yaml (engine.embed_model)")


def test_a_study_embeds_with_the_servers_model_and_promote_names_it(tmp_path, write_config, embedder):
    experiment = load_experiment(EXPERIMENT)
    right = answers_by_request({e.request: e.expected for e in experiment.requests})
    with OllamaDouble(embedders={"all-minilm": embedder}) as server:
        config = write_config(smoke_config(
            study={"name": "served", "trials": 1}, evaluation={"traffic": True, "limit": 30, "stages": []},
            engine={"embed_model": "all-minilm", "embed_url": server.url, "embed_api": "ollama"},
            search_space={"num_ctx": 1024, "few_shot": 2, "format": "schema", "cache": "semantic",
                          "cache_embedder": "server"}))
        prepared = prepare_study(load_config(config), tracking_uri=f"sqlite:///{tmp_path}/mlflow.db",
                                 backend=FakeBackend(right))
        report = run_study(prepared, trials=1, console=Console(file=io.StringIO()))
        embeds = [r for r in server.requests if r["path"] == "/api/embed"]
        misses = (report.trials["cache_hit_rate"].iloc[0] < 1) and len(embeds) > 1
        assert misses and report.trials["cache_embedder"].iloc[0] == "server"
        promote(prepared, "served", PromotionPolicy("trial", trial=0, repetitions=1, check_requests=4,
                                                    output=tmp_path / "out"))
        sidecar = json.loads((tmp_path / "out" / "promotion.json").read_text())
        assert {k: sidecar["cache"][k] for k in ("embedder", "embed_model", "embed_api", "embed_url")} == {
            "embedder": "ollama:all-minilm", "embed_model": "all-minilm", "embed_api": "ollama",
            "embed_url": server.url}
        cache = from_sidecar(sidecar)  # client code embeds with the same server's model
        assert isinstance(cache.embedder, ServerEmbedder) and cache.embedder.url == server.url


@pytest.fixture(scope="module")
def embedding_server():
    """llama-server started with --embeddings on the bundled model, as a user would run an embedding server."""
    with ServerProcess(find_binary(), bundled_model_path(), ["-c", "512", "--embeddings", "--pooling", "mean"]) as p:
        yield p


def test_an_openai_compatible_embedding_server_embeds_and_one_without_embeddings_is_refused(embedding_server):
    served = ServerEmbedder(f"{embedding_server.url}/v1", "smollm2", "openai")
    served.check("study.yaml (engine.embed_model)")
    same, other = served.embed("List all tasks"), served.embed("Review PR #42")
    assert abs(float(np.linalg.norm(same)) - 1) < 1e-5 and float(same @ served.embed("List all tasks")) > 0.9999
    assert float(same @ other) < 0.999  # another text, another vector
    # a llama-server started without --embeddings answers 501 to every embedding request
    with ServerProcess(find_binary(), bundled_model_path(), ["-c", "512"]) as plain:
        with pytest.raises(InputError, match=r"answered 501: This server does not support embeddings\. Start it "
                                             r"with `--embeddings`\); start the server with --embeddings"):
            ServerEmbedder(f"{plain.url}/v1", "smollm2", "openai").check("study.yaml (engine.embed_model)")
