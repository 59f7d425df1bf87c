"""The embedded engine on the real bundled model."""

from __future__ import annotations

import pytest

from pipeline.engines.embedded import bundled_model_path
from pipeline.engines.settings import InferenceSettings
from pipeline.measure.metrics import summarize
from pipeline.measure.runner import check_fit, prepare_requests, run_trial
from tests.conftest import plan

pytestmark = pytest.mark.slow


@pytest.fixture
def backend(engine):
    return engine


def settings(**changes) -> InferenceSettings:
    base = dict(num_ctx=1024, num_predict=64, temperature=0.0, top_p=1.0, top_k=40, few_shot=2,
                prompt_variant="compact", example_selection="by_label", format="off", seed=11)
    return InferenceSettings(**{**base, **changes})


def test_bundled_model_is_found_without_importing_its_package():
    path = bundled_model_path()
    assert path.name == "SmolLM2-135M-Instruct.Q4_1.gguf" and path.stat().st_size > 50_000_000


def test_describe_names_engine_and_model(backend):
    tags = backend.describe()
    assert tags["model"] == "SmolLM2-135M-Instruct.Q4_1.gguf" and len(tags["model_sha256"]) == 64
    assert tags["engine_version"].startswith("0.3.")


def test_one_load_per_context_size_and_warmup_kept_out(backend, experiment, prompts):
    examples = experiment.split("dev", 3)
    common = plan(experiment, prompts, backend, warmup_requests=2)
    first = run_trial(settings(num_ctx=768), examples, common)
    again = run_trial(settings(num_ctx=768, temperature=0.5), examples, common)
    assert (first.model_loads, first.warmup_requests) == (1, 2) and first.model_load_ms > 0
    assert (again.model_loads, again.warmup_requests, again.model_load_ms) == (0, 0, 0.0)
    assert len(first.records) == len(again.records) == 3  # warm-up calls are never records


def test_generation_timings_are_consistent(backend, experiment, prompts):
    backend.start_trial(1024)
    request = prepare_requests(experiment.split("dev", 1), prompts, settings())[0]
    out = backend.generate(request.messages, settings(), schema=experiment.schema.document)
    assert out.prompt_tokens == backend.count_prompt_tokens(request.messages)
    assert 0 < out.ttft_ms <= out.latency_ms
    assert 0 < out.prefill_ms <= out.ttft_ms
    assert 0 < out.decode_ms <= out.latency_ms
    # every decode step evaluates one token: the last token of a truncated answer is never evaluated, while
    # an answer that stopped evaluated its last token to sample the end-of-sequence token
    assert out.output_tokens >= 1 and out.decode_tokens == out.output_tokens - int(out.truncated)


def test_schema_format_constrains_answers_to_the_schema(backend, experiment, prompts):
    backend.start_trial(1024)
    outcome = run_trial(settings(format="schema", few_shot=0, num_predict=96), experiment.split("dev", 4),
                        plan(experiment, prompts, backend, warmup_requests=0))
    # without examples the model answers prose; the grammar forces schema-valid JSON
    assert all(r.score.schema_valid for r in outcome.records if not r.truncated)
    assert any(not r.truncated for r in outcome.records)


def test_output_limit_truncates(backend, experiment, prompts):
    backend.start_trial(1024)
    outcome = run_trial(settings(num_predict=4, few_shot=0), experiment.split("dev", 2),
                        plan(experiment, prompts, backend, warmup_requests=0))
    assert all(r.truncated and r.output_tokens == 4 for r in outcome.records)


def test_prompt_that_cannot_fit_is_infeasible_and_not_run(backend, experiment, prompts):
    tight = settings(num_ctx=256, num_predict=160, prompt_variant="verbose", few_shot=5)
    request = prepare_requests(experiment.split("dev", 1), prompts, tight)
    reason = check_fit(request, tight, backend, margin=0.1)
    assert reason is not None and "does not fit num_ctx 256" in reason
    loaded = set(backend._contexts)
    outcome = run_trial(tight, experiment.split("dev", 2), plan(experiment, prompts, backend))
    assert outcome.infeasible and outcome.records == [] and set(backend._contexts) == loaded
    roomy = settings(num_ctx=2048, prompt_variant="minimal", few_shot=0)
    assert check_fit(prepare_requests(experiment.split("dev", 1), prompts, roomy), roomy, backend, margin=0.1) is None


def test_a_trial_is_reproducible_whatever_ran_before(backend, experiment, prompts):
    hot = settings(temperature=0.9, top_p=0.95, few_shot=1)
    common = plan(experiment, prompts, backend, warmup_requests=0)
    examples = experiment.split("dev", 4)
    first = [r.answer for r in run_trial(hot, examples, common).records]
    run_trial(settings(few_shot=3), experiment.split("holdout", 2), common)  # leaves other prompts cached
    assert [r.answer for r in run_trial(hot, examples, common).records] == first


def test_the_prefix_a_prompt_shares_with_the_last_comes_from_the_kv_cache(backend, experiment, prompts):
    # with three fixed examples every prompt starts with the same system prompt and examples: once one request
    # has evaluated them (a trial starts from an empty cache), llama.cpp evaluates only what follows them, and
    # says how much (its perf counters)
    outcome = run_trial(settings(few_shot=3, example_selection="static"), experiment.split("dev", 4),
                        plan(experiment, prompts, backend))
    first, *later = outcome.records
    assert 0 < first.prompt_tokens_evaluated <= first.prompt_tokens_engine
    for record in later:
        assert 0 < record.prompt_tokens_evaluated < record.prompt_tokens_engine / 2, record
    reused = sum(r.prompt_tokens_engine - r.prompt_tokens_evaluated for r in outcome.records)
    assert summarize(outcome.records)["prompt_cached_share"] == reused / sum(r.prompt_tokens_engine
                                                                             for r in outcome.records) > 0.3
