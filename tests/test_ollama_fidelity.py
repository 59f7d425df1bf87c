"""Ollama as it behaves (ollama/ollama at fb30760): thinking models, silent truncation, reload detection.

Every test goes through the real ``ollama`` client (the backend's, or its own) against the double; each cites
the upstream source the double follows there.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import httpx
import jsonschema
import ollama
import optuna
import pytest
from mlflow import MlflowClient

from pipeline.commands.cli import main
from pipeline.engines.ollama import OllamaBackend
from pipeline.engines.settings import InferenceSettings
from pipeline.engines.truncation import PromptSizes
from pipeline.measure.records import RequestRecord
from pipeline.measure.runner import prepare_requests, run_trial
from pipeline.search.config import load_config
from pipeline.search.objectives import CONTEXT_FIT, trial_values
from pipeline.testing import OllamaDouble
from tests.conftest import ROOT, plan, smoke_config

pytestmark = pytest.mark.slow

THINKER, PLAIN = "thinker", "tuned"
HELLO = [{"role": "user", "content": "Create a task: write the report by Friday."}]
SCHEMA = {"type": "object", "properties": {"action": {"type": "string"}}, "required": ["action"]}


@pytest.fixture(scope="module")
def double(engine) -> Iterator[OllamaDouble]:
    with OllamaDouble(engine=engine, models={THINKER: None, PLAIN: None}, thinking=[THINKER]) as server:
        yield server


@pytest.fixture(autouse=True)
def _fresh(double: OllamaDouble) -> Iterator[None]:
    double.reload_delay_s, double.warm_load_s = 0.0, 0.002
    yield
    double.reload_delay_s, double.warm_load_s = 0.0, 0.002


@pytest.fixture
def client(double: OllamaDouble) -> Iterator[ollama.Client]:
    client = ollama.Client(host=double.url, timeout=60)
    yield client
    client.close()


def settings(**changes) -> InferenceSettings:
    base = dict(num_ctx=1024, num_predict=64, temperature=0.0, top_p=1.0, top_k=40, few_shot=2,
                prompt_variant="compact", example_selection="static", format="off", seed=3)
    serving = tuple((k, changes.pop(k)) for k in ("think",) if k in changes)
    return InferenceSettings(**{**base, **changes}, serving=serving)


def stream(client: ollama.Client, model: str = THINKER, **kwargs) -> list:
    options = {"num_ctx": 1024, "num_predict": 64, "temperature": 0.0, **kwargs.pop("options", {})}
    return list(client.chat(model=model, messages=HELLO, stream=True, options=options, **kwargs))


# -- thinking ------------------------------------------------------------------------------------------------


def test_a_thinking_model_thinks_by_default_and_eval_count_covers_thinking_and_answer(client):
    # server/routes.go ChatHandler: a model with the thinking capability gets think=true when the request has
    # none; thinking streams in message.thinking with empty content, then the answer; one completion, so its
    # eval_count counts both.
    assert "thinking" in client.show(THINKER).capabilities and "thinking" not in client.show(PLAIN).capabilities
    chunks = stream(client)
    thinking = [c for c in chunks if c.message.thinking]
    answer = [c for c in chunks if c.message.content]
    assert thinking and answer and all(not c.message.content for c in thinking)
    assert chunks.index(thinking[-1]) < chunks.index(answer[0])  # thinking first, then the answer
    final = chunks[-1]
    assert final.done and final.eval_count >= len(thinking) + len(answer)
    assert final.eval_count <= 64  # thinking used up part of num_predict


def test_with_format_the_schema_applies_after_thinking_and_only_that_request_is_reported(client):
    # server/routes.go ChatHandler, structuredOutputsState: with `format` on a thinking model the first
    # completion runs without it; when the answer starts it is cancelled and a second completion, with the
    # thinking as an assistant message and the format applied, answers. Its metrics alone reach the client.
    chunks = stream(client, format=SCHEMA)
    thinking = [c for c in chunks if c.message.thinking]
    answered = [c for c in chunks if c.message.content]
    jsonschema.validate(json.loads("".join(c.message.content for c in answered)), SCHEMA)
    final = chunks[-1]
    # The double streams one line per piece the engine counts as a token, and the schema's grammar admits no
    # token without text, so the answer's lines are the answer request's eval_count; the thinking's lines (the
    # first completion's) must not be in it, as they are without `format`.
    assert len(thinking) >= 8 and final.eval_count == len(answered)
    plain = stream(client, format=SCHEMA, think=False)
    assert not any(c.message.thinking for c in plain)
    # the answer's own prompt holds the thinking: counted bigger than the request's prompt alone
    assert final.prompt_eval_count > plain[-1].prompt_eval_count


def test_thinking_that_uses_up_num_predict_leaves_no_answer(client):
    chunks = stream(client, options={"num_predict": 8})
    assert any(c.message.thinking for c in chunks) and not "".join(c.message.content for c in chunks)
    assert chunks[-1].done_reason == "length" and chunks[-1].eval_count == 8


def test_think_values_as_the_server_takes_them(client):
    assert not any(c.message.thinking for c in stream(client, think=False))
    assert any(c.message.thinking for c in stream(client, think="low"))  # a level is thinking on (api.ThinkValue)
    with pytest.raises(ollama.ResponseError) as refused:
        stream(client, model=PLAIN, think=True)
    assert refused.value.status_code == 400 and refused.value.error == f'"{PLAIN}" does not support thinking'
    assert not any(c.message.thinking for c in stream(client, model=PLAIN, think=False))  # false is fine
    bad = httpx.post(f"{client._client.base_url}/api/chat", json={"model": THINKER, "messages": HELLO, "think": "lots"})
    assert bad.status_code == 400 and bad.json()["error"].startswith('invalid think value: "lots"')


def test_backend_measures_thinking_apart_and_the_parts_add_up_within_the_outside_clock(double, experiment, prompts):
    backend = OllamaBackend(THINKER, host=double.url, timeout_s=60)
    assert backend.can_think and backend.describe()["model_capabilities"] == "completion,thinking"
    for fmt in ("off", "schema"):
        outcome = run_trial(settings(format=fmt, think="on"), experiment.split("dev", 3),
                            plan(experiment, prompts, backend))
        for r in outcome.records:
            assert r.thinking_tokens and 0 < r.thinking_ttft_ms < r.thinking_ttft_ms + r.thinking_ms < r.ttft_ms
            # the server's clock runs inside ours; how much longer ours runs is the client's share, which a
            # busy machine stretches without limit, so it has no upper bound here
            assert r.ttft_ms < r.latency_ms and r.server_ms <= r.latency_ms
            if fmt == "off":  # one completion: its decode time covers the thinking
                assert r.thinking_ms <= r.decode_ms and r.prefill_ms + r.decode_ms <= r.latency_ms
            else:  # thinking, then the answer's own request: its prefill and decode, inside the outside clock
                assert r.thinking_ttft_ms + r.thinking_ms + r.prefill_ms + r.decode_ms <= r.latency_ms
        assert verdict(outcome).user_attrs["metrics"]["thinking_tokens_mean"] >= 8
    off = run_trial(settings(think="off"), experiment.split("dev", 2), plan(experiment, prompts, backend))
    assert all(r.thinking_tokens is None and r.thinking_ms is None for r in off.records)
    backend.close()


def verdict(outcome):
    """The Optuna trial a study would tell for this outcome (the smoke config's objectives)."""
    config = load_config(ROOT / "configs" / "smoke.yaml")
    trial = optuna.create_study(directions=[o.direction for o in config.objectives]).ask()
    trial_values(trial, outcome, config)
    return trial


def test_study_searches_think_and_records_thinking_metrics(double, tmp_path, write_config):
    raw = smoke_config(engine={"backend": "ollama", "ollama_model": THINKER, "host": double.url},
                       study={"trials": 3, "sampler": "random"}, evaluation={"limit": 2})
    raw["search_space"].update({"think": {"choices": ["on", "off"]}, "num_predict": 64, "format": "schema",
                                "few_shot": 0, "prompt_variant": "minimal"})
    raw["baseline"] = {**{k: (v if not isinstance(v, dict) else v["choices"][0]) for k, v in raw["search_space"].items()},
                       "think": "on"}
    code = main(["study", "--config", str(write_config(raw)), "--tracking-uri", f"sqlite:///{tmp_path}/mlflow.db"])
    assert code == 0
    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    runs = client.search_runs([client.get_experiment_by_name("smoke").experiment_id])
    trials = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    thought = [r for r in trials if r.data.params["think"] == "on"]
    assert thought and {r.data.params["think"] for r in trials} == {"on", "off"}
    for run in trials:
        m = run.data.metrics
        if run.data.params["think"] == "on":
            assert 0 < m["thinking_ttft_p50_ms"] < m["ttft_p50_ms"] and m["thinking_tokens_mean"] >= 8
            assert m["thinking_ms_p50"] > 0 and m["thinking_exhausted"] == 0
        else:
            assert "thinking_ms_p50" not in m
        assert run.data.tags["reload_threshold_ms"] and m["truncated_inputs"] == 0


@pytest.mark.parametrize("backend, model, message", [
    ("embedded", None, "search_space.think on: the embedded backend cannot switch a model's thinking"),
    ("ollama", PLAIN, f"search_space.think on: model '{PLAIN}' does not think"),
])
def test_think_where_it_cannot_apply_is_refused_up_front(double, tmp_path, write_config, capsys, backend, model,
                                                         message):
    engine = {"backend": backend, **({"ollama_model": model, "host": double.url} if model else {})}
    raw = smoke_config(engine=engine)
    raw["search_space"]["think"] = {"choices": ["on", "off"]}
    code = main(["study", "--config", str(write_config(raw)), "--tracking-uri", f"sqlite:///{tmp_path}/mlflow.db"])
    err = capsys.readouterr().err
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "mlflow.db").exists()


def test_thinking_that_exhausts_num_predict_is_counted_and_warned(double, experiment, prompts):
    backend = OllamaBackend(THINKER, host=double.url, timeout_s=60)
    outcome = run_trial(settings(think="on", num_predict=8), experiment.split("dev", 2),
                        plan(experiment, prompts, backend))
    assert all(r.thinking_exhausted and r.answer == "" for r in outcome.records)
    assert verdict(outcome).user_attrs["metrics"]["thinking_exhausted"] == 2.0
    backend.close()


# -- silent truncation ---------------------------------------------------------------------------------------


def test_a_prompt_over_num_ctx_loses_its_oldest_messages_silently(client, double, engine):
    # server/prompt.go chatPrompt: from the front, drop messages until the rest fits num_ctx, keeping the
    # system messages and always the last one; no error, no field says so.
    examples = [m for i in range(6) for m in ({"role": "user", "content": f"Example request {i}: " + "word " * 40},
                                                {"role": "assistant", "content": '{"action": "noop"}'})]
    messages = [{"role": "system", "content": "Answer with JSON."}, *examples, HELLO[0]]
    full = engine.count_prompt_tokens(messages)
    answer = client.chat(model=PLAIN, messages=messages, options={"num_ctx": 256, "num_predict": 4})
    assert answer.done and full > 256 >= answer.prompt_eval_count
    # exactly what chatPrompt keeps: the system message and the latest messages that fit
    kept = next(messages[:1] + messages[i:] for i in range(1, len(messages))
                if engine.count_prompt_tokens(messages[:1] + messages[i:]) <= 256)
    assert answer.prompt_eval_count == engine.count_prompt_tokens(kept) and len(kept) < len(messages)


def test_prompt_sizes_learn_the_ratio_and_flag_only_cut_prompts():
    sizes = PromptSizes()
    # before anything is learnt: the estimate itself, 30% tolerance
    assert sizes.expected("a", 400) == (400.0, 0.30)
    for estimate in (200, 210, 220):  # surely fit (estimate <= 2/3 of num_ctx): ratio 1.12
        assert not sizes.cut("a", estimate, round(estimate * 1.12), 1024)
    assert sizes.expected("a", 478) == (pytest.approx(478 * 1.12, rel=0.01), 0.05)
    assert sizes.cut("a", 478, 487, 500)  # expected 535, over num_ctx 500, counted 9% less: cut
    assert not sizes.cut("a", 478, 530, 560)  # within 5% of the expectation
    assert not sizes.cut("a", 300, 250, 1024)  # fewer than expected, but it would have fit: not a cut
    assert not sizes.cut("a", 478, None, 500)  # no count, no verdict
    # another shape borrows the study's ratio with a wider tolerance
    assert sizes.expected("b", 100)[1] == 0.08


@pytest.mark.parametrize("seed", range(30))
def test_prompt_sizes_never_flag_an_uncut_prompt_within_the_measured_ratio_spread(seed):
    import random

    rng = random.Random(seed)
    sizes = PromptSizes()
    ratio = rng.uniform(1.10, 1.19)  # the spread measured across shapes (pipeline.truncation)
    for _ in range(40):
        estimate = rng.randint(20, 900)
        num_ctx = rng.choice([512, 1024, 2048])
        counted = round(estimate * ratio * rng.uniform(0.98, 1.02))  # one shape: within 2%
        if counted <= num_ctx:  # the server would not cut it
            assert not sizes.cut("shape", estimate, counted, num_ctx)


def test_a_trial_whose_prompts_were_cut_breaks_context_fit_with_the_reason(double, experiment, prompts, engine):
    backend = OllamaBackend(PLAIN, host=double.url, timeout_s=60)
    run = plan(experiment, prompts, backend, margin=0.0)
    examples = experiment.split("dev", 3)
    shape = dict(few_shot=4, prompt_variant="verbose")
    # the same prompts with room to spare teach the ratio (counted / estimate)
    roomy = run_trial(settings(num_ctx=2048, num_predict=8, **shape), examples, run)
    assert not any(r.input_truncated for r in roomy.records)
    # a context the estimate says fits (estimate + num_predict <= num_ctx) but the model's tokens do not
    requests = prepare_requests(examples, prompts, settings(**shape))
    estimate = max(r.estimated_tokens for r in requests)
    real = min(engine.count_prompt_tokens(r.messages) for r in requests)
    num_ctx = estimate + 8
    assert real > num_ctx
    tight = run_trial(settings(num_ctx=num_ctx, num_predict=8, **shape), examples, run)
    assert tight.infeasible is None and all(r.input_truncated for r in tight.records)
    assert all(r.prompt_tokens_engine <= num_ctx for r in tight.records)
    trial = verdict(tight)
    assert trial.user_attrs["metrics"]["truncated_inputs"] == 3.0
    assert "the server cut 3 of 3 prompts to fit num_ctx" in trial.user_attrs["infeasible"]
    assert trial.constraints[CONTEXT_FIT] == 3.0
    backend.close()


def test_a_study_keeps_cut_trials_off_the_front_and_promote_refuses_one(double, experiment, prompts, engine, tmp_path,
                                                                         write_config, capsys):
    shape = dict(few_shot=4, prompt_variant="verbose", example_selection="static")
    requests = prepare_requests(experiment.split("dev", 3), prompts, settings(**shape))
    tight = max(r.estimated_tokens for r in requests) + 8  # the estimate fits; the model's tokens do not
    assert min(engine.count_prompt_tokens(r.messages) for r in requests) > tight
    raw = smoke_config(engine={"backend": "ollama", "ollama_model": PLAIN, "host": double.url, "context_margin": 0.0},
                       study={"name": "cut", "trials": 2, "batch": 1})
    raw["search_space"].update({"num_ctx": {"choices": [2048, tight]}, "num_predict": 8, "format": "off",
                                "few_shot": 4, "prompt_variant": "verbose", "think": "off"})
    # the baseline, measured first with room to spare, teaches the server's ratio for this prompt shape
    raw["baseline"] = {"num_ctx": 2048, "num_predict": 8, "temperature": 0.0, "top_p": 1.0, "top_k": 40,
                       "few_shot": 4, "prompt_variant": "verbose", "example_selection": "static", "format": "off",
                       "think": "off"}
    config = write_config(raw)
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    assert main(["study", "--config", str(config), "--tracking-uri", uri]) == 0
    study = optuna.load_study(study_name="cut", storage=f"sqlite:///{tmp_path}/optuna.db")
    cut = [t for t in study.trials if t.params.get("num_ctx") == tight]
    assert cut and all(t.user_attrs["metrics"]["truncated_inputs"] == 3 for t in cut)
    assert all("the server cut 3 of 3 prompts" in t.user_attrs["infeasible"] for t in cut)
    assert all(t.params["num_ctx"] == 2048 for t in study.best_trials)
    client = MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name("smoke").experiment_id])
    tagged = [r for r in runs if r.data.params.get("num_ctx") == str(tight)]
    assert tagged and all(r.data.metrics["truncated_inputs"] == 3 and r.data.tags["feasible"] == "false"
                          for r in tagged)
    capsys.readouterr()
    code = main(["promote", "cut", "--config", str(config), "--tracking-uri", uri, "--policy", "trial", "--trial",
                 str(cut[0].number), "--output", str(tmp_path / "out")])
    assert code != 0 and "breaks a constraint" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


# -- reload detection ----------------------------------------------------------------------------------------


def test_warm_load_duration_is_realistic_and_keep_alive_zero_reloads_every_request(client, double):
    # server/routes.go: load_duration = checkpointLoaded - checkpointStart, the lookup and scheduling before the
    # runner; docs/api.md's warm examples show 1.3-6.7 ms.
    stream(client, model=PLAIN, think=False)
    loads = double.loads
    # Realistic as Ollama's: the time really spent before generating, not a constant. A lookup slower than the
    # fixture's 2 ms, so that a double reporting its setting would fail: the warm request loads nothing, and its
    # load_duration is that lookup, inside the request's own clock (the _fresh fixture puts 2 ms back).
    double.warm_load_s = 0.03
    warm = stream(client, model=PLAIN, think=False)[-1]
    assert double.loads == loads
    assert 30_000_000 <= warm.load_duration
    assert warm.load_duration + warm.prompt_eval_duration + warm.eval_duration <= warm.total_duration
    for _ in range(3):  # keep_alive 0: the runner expires after each request, so the next one loads again
        client.chat(model=PLAIN, messages=HELLO, keep_alive=0, options={"num_ctx": 1024, "num_predict": 2})
        assert client.ps().models == []
    assert double.loads == loads + 2  # the first found the model loaded


def test_reload_threshold_follows_the_warm_load_duration(double, experiment, prompts):
    backend = OllamaBackend(PLAIN, host=double.url, timeout_s=60)
    run = plan(experiment, prompts, backend)
    examples = experiment.split("dev", 3)
    # a slow server: every warm request spends 300 ms before generating. A fixed 250 ms threshold would take each
    # one for a reload; the calibrated one does not.
    double.warm_load_s = 0.3
    outcome = run_trial(settings(num_ctx=1024), examples, run)
    assert outcome.model_loads == 1 and len(outcome.records) == 3
    assert backend.reload_threshold >= 5 * 300
    fixed = OllamaBackend(PLAIN, host=double.url, timeout_s=60, reload_threshold_ms=250)
    double.warm_load_s = 0.002
    # a real reload inside a request (another client loaded another context; loads take 2 s) is still caught
    backend.client.chat(PLAIN, messages=[], options={"num_ctx": 2048})
    double.reload_delay_s = 3.0
    sent = len(double.requests)
    again = run_trial(settings(num_ctx=1024), examples, run)
    assert again.model_loads == 1 and again.model_load_ms >= 3000 and len(again.records) == 3
    # the request that carried the reload, one warm-up, then the three timed requests: none holds the reload
    chats = [r for r in double.requests[sent:] if r["path"] == "/api/chat"]
    assert len(chats) == 5 and max(r.latency_ms for r in again.records) < 3000
    assert backend.serving_tags()["reload_threshold_ms"] == f"{backend.reload_threshold:.1f}"
    fixed.close()
    backend.close()


def test_thinking_exhausted_needs_thinking_a_length_stop_and_no_answer():
    record = RequestRecord("r", "q", {}, "", None, 1.0, truncated=True, thinking_tokens=3)  # type: ignore[arg-type]
    assert record.thinking_exhausted and not record.input_truncated
    answered = RequestRecord("r", "q", {}, "{}", None, 1.0, truncated=True, thinking_tokens=3)  # type: ignore[arg-type]
    unthinking = RequestRecord("r", "q", {}, "", None, 1.0, truncated=True)  # type: ignore[arg-type]
    assert not answered.thinking_exhausted and not unthinking.thinking_exhausted


def test_think_is_an_optional_setting_read_as_yaml_writes_it(write_config):
    from pipeline.engines.settings import settings_of
    from pipeline.errors import ConfigError

    raw = smoke_config()
    raw["search_space"]["think"] = {"choices": [False, True, "low"]}  # YAML 1.1 reads bare off/on as booleans
    space = load_config(write_config(raw)).search_space
    assert space["think"].choices == ("off", "on", "low")
    raw["search_space"]["think"] = "maybe"
    with pytest.raises(ConfigError, match="'maybe' is not one of default, off, on, low, medium, high, max"):
        load_config(write_config(raw, "bad.yaml"))
    values = dict(num_ctx=1024, num_predict=64, temperature=0.0, top_p=1.0, top_k=40, few_shot=0,
                  prompt_variant="compact", example_selection="static", format="off")
    thinking = settings_of({**values, "think": "on", "parallel": 2}, seed=1)
    assert thinking.think == "on" and thinking.server == {"parallel": 2} and thinking.as_params()["think"] == "on"
    assert thinking.load_key == settings_of({**values, "think": "off", "parallel": 2}, seed=1).load_key  # no reload
    assert settings_of(values, seed=1).think == "default"
