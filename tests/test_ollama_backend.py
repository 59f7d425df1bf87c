"""The Ollama backend, driven through the real `ollama` client against the protocol-level double."""

from __future__ import annotations

import socket

import optuna
import pytest
from mlflow import MlflowClient

from pipeline.commands.cli import main
from pipeline.engines.config import EngineConfig
from pipeline.engines.ollama import OllamaBackend
from pipeline.engines.registry import make_backend
from pipeline.engines.settings import InferenceSettings
from pipeline.errors import BackendError, InputError, PipelineError
from pipeline.measure.runner import run_trial
from pipeline.search.config import load_config
from pipeline.search.prepare import prepare_study
from pipeline.search.study import run_study
from pipeline.testing.ollama_double import OllamaDouble
from tests.conftest import ROOT, plan

pytestmark = pytest.mark.slow


@pytest.fixture
def double(engine):
    with OllamaDouble(engine=engine) as server:
        yield server


def closed_port_url() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}"


def settings(**changes) -> InferenceSettings:
    base = dict(num_ctx=1024, num_predict=48, temperature=0.0, top_p=1.0, top_k=40, few_shot=2,
                prompt_variant="compact", example_selection="by_label", format="off", seed=3)
    return InferenceSettings(**{**base, **changes})


def trial(backend, experiment, prompts, *, count=3, **changes):
    return run_trial(settings(**changes), experiment.split("dev", count), plan(experiment, prompts, backend))


def test_preflight_records_server_and_model(double):
    backend = OllamaBackend("tuned", host=double.url, timeout_s=30)
    tags = backend.describe()
    assert tags["engine"] == "ollama" and tags["engine_version"] == "0.12.0" and tags["model"] == "tuned"
    assert len(tags["model_digest"]) >= 64 and tags["model_quantization"] == "Q4_1"
    assert tags["model_parameter_size"] == "135M" and tags["model_family"] != "unknown"
    assert tags["ollama_host"] == double.url


def test_unreachable_server_names_host_and_fix():
    url = closed_port_url()
    with pytest.raises(InputError) as caught:
        OllamaBackend("tuned", host=url, timeout_s=5)
    message = str(caught.value)
    assert url in message and "ollama serve" in message and "--backend embedded" in message


def test_missing_model_names_the_pull(double):
    with pytest.raises(InputError, match=r"model 'nope' is not on the Ollama server .*ollama pull nope.* --pull"):
        OllamaBackend("nope", host=double.url, timeout_s=30)


def test_pull_flag_pulls_with_progress(double):
    double.pullable = {"fresh-model"}
    seen = []
    backend = OllamaBackend("fresh-model", host=double.url, timeout_s=30, pull=True,
                            on_pull=lambda status, done, total: seen.append(status))
    assert backend.describe()["model"] == "fresh-model"
    assert "success" in seen and any("download" in s for s in seen)


def test_requests_use_ollamas_names_streaming_and_keep_alive(double, experiment, prompts):
    backend = OllamaBackend("tuned", host=double.url, timeout_s=60, keep_alive="7m")
    outcome = trial(backend, experiment, prompts, count=2, format="schema")
    chats = [r["body"] for r in double.requests if r["path"] == "/api/chat" and r["body"]["messages"]]
    assert len(chats) == 1 + 2  # one warm-up after the load, two timed
    for body in chats:
        assert body["stream"] is True and body["keep_alive"] == "7m" and body["model"] == "tuned"
        assert body["options"] == settings(format="schema").options()
        assert body["format"] == experiment.schema.document
    assert all(r.score.schema_valid for r in outcome.records if not r.truncated)


def test_server_timings_and_overhead(double, experiment, prompts):
    backend = OllamaBackend("tuned", host=double.url, timeout_s=60)
    outcome = trial(backend, experiment, prompts)
    for record in outcome.records:
        assert 0 < record.server_ms <= record.latency_ms
        assert record.prefill_ms > 0 and record.decode_ms > 0 and record.output_tokens > 0
        assert record.prefill_ms + record.decode_ms <= record.server_ms
        assert record.overhead_ms == pytest.approx(record.latency_ms - record.server_ms)


def test_num_ctx_change_reloads_once_and_is_kept_out_of_timings(double, experiment, prompts):
    backend = OllamaBackend("tuned", host=double.url, timeout_s=60)
    first = trial(backend, experiment, prompts, num_ctx=1024)
    same = trial(backend, experiment, prompts, num_ctx=1024, temperature=0.3)
    other = trial(backend, experiment, prompts, num_ctx=2048)
    assert (first.model_loads, same.model_loads, other.model_loads) == (1, 0, 1)
    assert double.loads == 2 and first.warmup_requests == 1 and same.warmup_requests == 0
    assert all(len(o.records) == 3 for o in (first, same, other))


def test_reload_inside_a_request_is_detected_and_measured_again(double, experiment, prompts):
    backend = OllamaBackend("tuned", host=double.url, timeout_s=60, reload_threshold_ms=100)
    trial(backend, experiment, prompts, num_ctx=1024)
    # Another client makes the server load another context; then every reload takes 0.3 s.
    backend.client.chat("tuned", messages=[], options={"num_ctx": 2048})
    double.reload_delay_s = 2.0
    sent = len(double.requests)
    outcome = trial(backend, experiment, prompts, num_ctx=1024)
    assert outcome.model_loads == 1 and outcome.model_load_ms >= 2000 and outcome.warmup_requests == 1
    # the request that carried the reload, one warm-up, then the three timed requests
    chats = [r for r in double.requests[sent:] if r["path"] == "/api/chat"]
    assert len(chats) == 5 and len(outcome.records) == 3
    assert max(r.latency_ms for r in outcome.records) < 2000  # the reload is in no latency


@pytest.mark.parametrize("fault, timeout_s, message", [
    ("slow", 5, "timed out after 5 s"),  # ten times a normal request here, so only the slow one times out
    ("drop", 60, "connection dropped"),
    ("midstream_error", 60, "Ollama error (mid-stream)"),
    ("http_error", 60, "Ollama error (HTTP 500)"),
])
def test_a_failing_request_is_a_failed_record_and_the_trial_goes_on(double, experiment, prompts, fault, timeout_s,
                                                                     message):
    backend = OllamaBackend("tuned", host=double.url, timeout_s=timeout_s)
    backend.start_trial(1024)
    double.inject(fault, delay_s=timeout_s + 1)
    outcome = trial(backend, experiment, prompts, count=3)
    failed = [r for r in outcome.records if r.failed]
    assert len(failed) == 1 and message in failed[0].score.error
    assert len(outcome.records) == 3 and sum(not r.failed for r in outcome.records) == 2


def test_auto_takes_ollama_when_it_has_the_model(double):
    backend, choice = make_backend(EngineConfig(backend="auto", ollama_model="tuned", host=double.url))
    assert backend.name == "ollama" and choice.startswith("ollama: tuned on ")


@pytest.mark.parametrize("model", ["tuned", "missing-model"])
def test_auto_falls_back_to_embedded(double, model):
    host = double.url if model == "missing-model" else closed_port_url()
    backend, choice = make_backend(EngineConfig(backend="auto", ollama_model=model, host=host))
    try:
        assert backend.name == "embedded" and "(auto: " in choice
    finally:
        backend.close()


def runs(tmp_path):
    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    runs = client.search_runs([client.get_experiment_by_name("smoke").experiment_id])
    return ([r for r in runs if "mlflow.parentRunId" not in r.data.tags],
            [r for r in runs if "mlflow.parentRunId" in r.data.tags])


def test_study_through_the_server(double, tmp_path):
    code = main(["study", "--config", str(ROOT / "configs/smoke.yaml"), "--backend", "ollama", "--model",
                 "tuned", "--host", double.url, "--trials", "2", "--tracking-uri", f"sqlite:///{tmp_path}/mlflow.db"])
    assert code == 0
    parents, children = runs(tmp_path)
    assert len(parents) == 1 and len(children) == 2
    assert parents[0].data.tags["backend"] == "ollama" and parents[0].data.params["study.backend"] == "ollama"
    for child in children:
        m, t = child.data.metrics, child.data.tags
        assert 0 <= m["schema_valid_rate"] <= 1 and 0 < m["latency_p50_ms"] <= m["latency_p95_ms"]
        # The double's total_duration runs from its handler's start to just before it writes the final line, and
        # our clock from before the request is sent to after that line is read: on every request the server's
        # time is inside ours, so each server percentile is at most the same latency percentile and the overhead
        # is positive (the request and the last line cross the socket outside the server's clock).
        assert 0 < m["server_ms_p50"] <= m["latency_p50_ms"] and 0 < m["server_ms_p95"] <= m["latency_p95_ms"]
        assert m["overhead_ms_mean"] > 0 and m["overhead_ms_p95"] > 0
        assert m["prefill_ms_mean"] > 0 and m["decode_tokens_per_s"] > 0
        assert t["engine"] == "ollama" and t["model_quantization"] == "Q4_1" and t["engine_version"] == "0.12.0"


def test_dead_server_fails_trials_and_stops_the_study(engine, tmp_path, write_config):
    from tests.conftest import smoke_config

    path = write_config(smoke_config(study={"max_consecutive_failures": 2, "batch": 1},
                                     engine={"backend": "ollama", "ollama_model": "tuned"}))
    config = load_config(path)
    with OllamaDouble(engine=engine) as server:
        config = config.with_overrides(engine={"host": server.url})
        prepared = prepare_study(config, tracking_uri=f"sqlite:///{tmp_path}/mlflow.db")
        assert run_study(prepared, trials=1).new_trials == 1
    # the server is gone now
    with pytest.raises(PipelineError, match="study stopped after 2 failed trials in a row; last: .*(gone|load)"):
        run_study(prepared, trials=3)
    study = optuna.load_study(study_name="smoke", storage=f"sqlite:///{tmp_path}/optuna.db")
    states = [t.state.name for t in study.trials]
    assert states == ["COMPLETE", "FAIL", "FAIL"]  # the third trial was never started
    parents, children = runs(tmp_path)
    assert sorted(c.info.status for c in children) == ["FAILED", "FAILED", "FINISHED"]
    assert parents[0].info.status == "FAILED" and "failed trials in a row" in parents[0].data.tags["stopped"]
    assert all(c.data.tags.get("failure") for c in children if c.info.status == "FAILED")
    # the trial before the server went away: the double answered each of its 3 requests (the smoke config's
    # limit), and what Optuna holds of it is what its MLflow run holds
    metrics = study.trials[0].user_attrs["metrics"]
    assert metrics["requests_measured"] == 3 and metrics["failed_requests"] == 0
    (finished,) = [c for c in children if c.info.status == "FINISHED"]
    assert finished.data.metrics["schema_valid_rate"] == metrics["schema_valid_rate"]
    with pytest.raises(BackendError):
        prepared.backend.start_trial(4096)


def test_concurrent_clients_against_the_server(double, experiment, prompts):
    # Two closed-loop clients: the server takes one request at a time (as OLLAMA_NUM_PARALLEL=1 does), so the
    # other waits inside it; its total_duration counts the wait (the clock starts when the request arrives, as
    # in Ollama's handlers), so the waiting shows in the latencies, which overlap.
    backend = OllamaBackend("tuned", host=double.url, timeout_s=60)
    outcome = run_trial(settings(serving=(("concurrency", 2),)), experiment.split("dev", 6),
                        plan(experiment, prompts, backend))
    records = outcome.records
    assert len(records) == 6 and not any(r.failed for r in records)
    assert sum(r.latency_ms for r in records) / 1000 / outcome.span_s > 1.3
    assert max(r.server_ms for r in records) > 1.5 * min(r.server_ms for r in records)


def test_a_num_ctx_above_the_models_training_context_is_refused_up_front(double, tmp_path, write_config):
    from tests.conftest import smoke_config

    raw = smoke_config(engine={"backend": "ollama", "ollama_model": "tuned", "host": double.url})
    raw["search_space"]["num_ctx"] = {"choices": [1024, 16384]}
    with pytest.raises(PipelineError, match="num_ctx reaches 16384, above the model's training context 8192"):
        prepare_study(load_config(write_config(raw)), tracking_uri=f"sqlite:///{tmp_path}/mlflow.db")
    backend = OllamaBackend("tuned", host=double.url, timeout_s=60)
    assert backend.context_limit == 8192 and backend.describe()["model_context_length"] == "8192"
    backend.close()
