"""The Ollama test double, driven over HTTP by the real ``ollama`` client (and plain httpx), never mocked."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import jsonschema
import ollama
import pytest

from pipeline.testing import OllamaDouble

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent
MODEL = "tuned"
CTX = 1024  # the context most tests share, so they do not reload each other's model
HELLO = [{"role": "user", "content": "Say hello to the team."}]


@pytest.fixture(autouse=True)
def _fresh(double: OllamaDouble) -> Iterator[None]:
    """No fault or log entry of one test reaches the next."""
    double.clear_faults()
    double.requests.clear()
    yield
    double.clear_faults()


@pytest.fixture
def client(double: OllamaDouble) -> Iterator[ollama.Client]:
    client = ollama.Client(host=double.url, timeout=60)
    yield client
    client.close()


def chat(client: ollama.Client, messages: list[dict[str, str]] = HELLO, *, model: str = MODEL, stream: bool = False,
         **options: Any) -> Any:
    return client.chat(model=model, messages=messages, stream=stream,
                       options={"num_ctx": CTX, "num_predict": 24, "temperature": 0.0, **options})


def test_version_root_and_unknown_paths_answer_as_ollama_does(double):
    assert httpx.get(f"{double.url}/api/version").json() == {"version": "0.12.0"}
    assert httpx.get(double.url).text == "Ollama is running"
    missing = httpx.post(f"{double.url}/api/generate", json={"model": MODEL})
    assert (missing.status_code, missing.json()) == (404, {"error": "404 page not found"})
    assert [r["path"] for r in double.requests] == ["/api/version", "/", "/api/generate"]


def test_tags_list_the_model_with_the_digest_of_its_file(client, engine):
    listed = {m.model: m for m in client.list().models}["tuned:latest"]  # other tests create more
    assert listed.digest == engine.sha256
    assert listed.size == engine.model_path.stat().st_size
    details = listed.details
    assert (details.format, details.family, details.parameter_size, details.quantization_level) == (
        "gguf", "llama", "135M", "Q4_1")


def test_show_describes_the_model_and_unknown_names_are_404(client):
    shown = client.show(MODEL)
    assert shown.details.quantization_level == "Q4_1" and shown.details.families == ["llama"]
    assert shown.capabilities == ["completion"] and shown.modelinfo["general.architecture"] == "llama"
    assert shown.modelinfo["llama.context_length"] == 8192 and "{%" in shown.template
    with pytest.raises(ollama.ResponseError) as missing:
        client.show("nope")
    assert (missing.value.status_code, missing.value.error) == (404, "model 'nope' not found")


def test_streamed_chat_sends_pieces_as_generated_then_measured_timings(client, double):
    *pieces, final = chat(client, stream=True)
    assert len(pieces) >= 3 and all(not p.done and p.message.content for p in pieces)
    assert final.done and final.done_reason in ("stop", "length") and final.message.content == ""
    timings = [final.total_duration, final.load_duration, final.prompt_eval_count, final.prompt_eval_duration,
               final.eval_count, final.eval_duration]
    assert all(isinstance(t, int) and t > 0 for t in timings)
    assert final.prompt_eval_duration + final.eval_duration <= final.total_duration
    assert final.load_duration <= final.total_duration and final.eval_count >= len(pieces)
    (running,) = client.ps().models
    assert (running.model, running.context_length, running.size_vram) == ("tuned:latest", CTX, 0)
    assert double.requests[0]["body"]["options"]["num_ctx"] == CTX


def test_first_piece_arrives_before_the_answer_is_finished(client):
    stream = chat(client, [{"role": "user", "content": "Tell a long story about a robot."}], stream=True,
                  num_predict=32)
    start = time.perf_counter()
    first = next(stream)
    first_at = time.perf_counter() - start
    rest = list(stream)
    total_at = time.perf_counter() - start
    assert not first.done and rest[-1].done and rest[-1].eval_count == 32
    # a piece written as soon as it is generated reaches the client long before the last one
    assert first_at < total_at / 2


def test_one_runner_answers_one_request_at_a_time(double):
    clients = [httpx.Client(base_url=double.url, timeout=60) for _ in range(2)]
    together = threading.Barrier(2)

    def ask(http: httpx.Client, text: str) -> dict[str, Any]:
        body = {"model": MODEL, "stream": False, "messages": [{"role": "user", "content": text}],
                "options": {"num_ctx": CTX, "num_predict": 24, "temperature": 0}}
        together.wait()
        return http.post("/api/chat", json=body).json()

    with ThreadPoolExecutor(2) as pool:
        first, later = sorted(pool.map(ask, clients, ["Name a colour.", "Name a fruit."]),
                              key=lambda a: a["total_duration"])
    for http in clients:
        http.close()
    # the later request queued while the other one was evaluated, and its own wall time says so
    waited = later["total_duration"] - later["load_duration"] - later["prompt_eval_duration"] - later["eval_duration"]
    assert waited > (first["prompt_eval_duration"] + first["eval_duration"]) / 2


def test_raw_requests_stream_by_default_as_ollama_does(double):
    body = {"model": MODEL, "messages": HELLO, "options": {"num_ctx": CTX, "num_predict": 8}}
    response = httpx.post(f"{double.url}/api/chat", json=body, timeout=60)
    lines = [json.loads(line) for line in response.text.splitlines()]
    assert response.headers["content-type"] == "application/x-ndjson" and len(lines) >= 2
    assert [line["done"] for line in lines] == [False] * (len(lines) - 1) + [True]


def test_unstreamed_chat_returns_one_object_with_the_whole_answer(client):
    answer = chat(client, num_predict=12)
    assert answer.done and answer.message.role == "assistant" and answer.message.content.strip()
    assert 0 < answer.eval_count <= 12 and answer.total_duration > answer.eval_duration > 0


def test_schema_format_constrains_the_answer_to_the_schema(client):
    schema = json.loads((ROOT / "experiments" / "task_api" / "schema.json").read_text())
    system = (ROOT / "prompts" / "task_api" / "compact.txt").read_text()
    answer = client.chat(model=MODEL, format=schema, options={"num_ctx": CTX, "num_predict": 96, "temperature": 0},
                         messages=[{"role": "system", "content": system},
                                   {"role": "user", "content": "Review code by Friday"}])
    assert answer.done_reason == "stop"
    jsonschema.validate(json.loads(answer.message.content), schema)


def test_a_new_num_ctx_reloads_the_model(client, double):
    chat(client, num_predict=4)
    loads = double.loads
    same = chat(client, num_predict=4)
    changed = chat(client, num_predict=4, num_ctx=1280)  # a size no other test loads: a real load
    assert double.loads == loads + 1
    assert changed.load_duration > 20 * same.load_duration and changed.load_duration > 10_000_000
    assert client.ps().models[0].context_length == 1280
    back = chat(client, num_predict=4)  # the engine still holds this context: a reload, a quick one
    assert double.loads == loads + 2 and back.done and client.ps().models[0].context_length == CTX


def test_empty_messages_load_the_model_and_keep_alive_zero_unloads_it(client, double):
    loads = double.loads
    loaded = client.chat(model=MODEL, messages=[], options={"num_ctx": 768})
    assert (loaded.done, loaded.done_reason, loaded.message.content) == (True, "load", "")
    assert double.loads == loads + 1 and client.ps().models[0].context_length == 768
    unloaded = client.chat(model=MODEL, messages=[], keep_alive=0)
    assert unloaded.done_reason == "unload" and client.ps().models == []


def test_created_model_brings_its_system_prompt_and_default_options(client):
    progress = [p.status for p in client.create("terse", from_=MODEL, system="Answer in one short sentence.",
                                                parameters={"num_predict": 6, "num_ctx": CTX}, stream=True)]
    assert progress[0].startswith("using existing layer sha256:") and progress[-2:] == ["writing manifest",
                                                                                     "success"]
    answer = client.chat(model="terse", messages=HELLO)
    assert answer.model == "terse" and 0 < answer.eval_count <= 6
    shown = client.show("terse:latest")
    assert shown.details.parent_model == "tuned:latest" and "num_predict" in shown.parameters
    assert "terse:latest" in [m.model for m in client.list().models]

    # a system prompt too long for the context proves it is put before the request's messages
    assert client.create("wordy", from_=MODEL, system="Be thorough. " * 400, parameters={"num_ctx": CTX}).status == (
        "success")
    with pytest.raises(ollama.ResponseError) as too_long:
        client.chat(model="wordy", messages=HELLO, options={"num_predict": 4})
    assert too_long.value.status_code == 400 and "exceeds num_ctx" in too_long.value.error
    own_system = [{"role": "system", "content": "Be brief."}, *HELLO]
    assert client.chat(model="wordy", messages=own_system, options={"num_predict": 4}).done
    # a base the server lacks: tests/test_ollama_errors.py::test_create_from_an_unknown_base_fails_as_its_pull_does


def test_pull_streams_progress_for_a_pullable_name(client, double, engine):
    # an unknown name: tests/test_ollama_errors.py, section 4
    double.pullable.add("smollm2:135m")
    try:
        progress = list(client.pull("smollm2:135m", stream=True))
    finally:
        double.pullable.clear()
    assert [p.status for p in progress] == ["pulling manifest", "downloading", "downloading", "downloading",
                                            "success"]
    downloads = progress[1:4]
    assert {p.digest for p in downloads} == {f"sha256:{engine.sha256}"}
    assert [p.completed for p in downloads] == sorted(p.completed for p in downloads)
    assert downloads[-1].completed == downloads[-1].total == engine.model_path.stat().st_size
    assert "smollm2:135m" in [m.model for m in client.list().models]


def test_slow_fault_lets_the_client_timeout_fire(double):
    double.inject("slow", delay_s=2.0)
    impatient = ollama.Client(host=double.url, timeout=1.0)
    start = time.perf_counter()
    with pytest.raises(httpx.TimeoutException):
        chat(impatient)
    assert time.perf_counter() - start < 1.9
    impatient.close()


def test_drop_fault_breaks_the_stream_after_some_pieces(client, double):
    double.inject("drop")
    received = []
    with pytest.raises(httpx.RemoteProtocolError):
        for part in chat(client, stream=True):
            received.append(part)
    assert 1 <= len(received) <= 2 and not any(p.done for p in received)


def test_midstream_error_fault_raises_response_error_after_some_pieces(client, double):
    double.inject("midstream_error")
    received = []
    with pytest.raises(ollama.ResponseError) as failed:
        for part in chat(client, stream=True):
            received.append(part)
    assert len(received) == 2 and received[0].message.content
    # an error line inside a 200 stream carries no status: the client reports -1
    assert (failed.value.error, failed.value.status_code) == ("an error was encountered while running the model",
                                                               -1)


def test_http_error_fault_answers_the_status_for_the_next_requests_only(client, double):
    double.inject("http_error", status=503, count=2)
    for stream in (False, True):
        with pytest.raises(ollama.ResponseError) as failed:
            answer = chat(client, stream=stream)
            list(answer) if stream else None
        assert failed.value.status_code == 503
    assert chat(client, num_predict=4).done


def test_prompt_eval_count_is_the_whole_prompt_cached_prefix_included(client, engine):
    # ollama/ollama llm/llama_server.go (fb30760): promptEvalCount() = cache_n + prompt_n; its tests
    # TestLlamaServer{Completion,Chat}PromptEvalCountIncludesCache want 17 for cache_n 12 + prompt_n 5.
    first = chat(client, num_predict=4)
    again = chat(client, num_predict=4)  # the same prompt: all of it cached but the last token
    expected = engine.count_prompt_tokens(HELLO)
    assert first.prompt_eval_count == again.prompt_eval_count == expected


def test_a_num_ctx_above_the_training_context_is_capped_to_it(client, double):
    # ollama/ollama server/sched.go (fb30760): effectiveContext(numCtx, trainCtx) returns trainCtx when numCtx is
    # larger; llm/server.go logs "requested context size too large for model" and sets NumCtx = trainCtx.
    train = client.show(MODEL).modelinfo["llama.context_length"]
    chat(client, num_predict=4, num_ctx=train * 2)
    assert client.ps().models[0].context_length == train
    loads = double.loads
    chat(client, num_predict=4, num_ctx=train)  # the same effective context: no reload
    assert double.loads == loads
    chat(client, num_predict=4)  # back to the shared context for the other tests
