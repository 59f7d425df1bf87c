"""The Ollama double fails as the real Ollama server does, driven by the real ``ollama`` client (httpx where the
client refuses the request itself or hides the status). Each test cites the upstream code it follows, in
ollama/ollama at commit fb30760."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import datetime, timezone

import httpx
import ollama
import pytest

from pipeline.engines.base import RequestFailed
from pipeline.engines.ollama import OllamaBackend
from pipeline.engines.settings import InferenceSettings
from pipeline.errors import InputError
from pipeline.testing import OllamaDouble
from pipeline.testing.golang import parse_duration_ns
from pipeline.testing.ollama_double import PULL_ERROR

pytestmark = pytest.mark.slow

MODEL = "tuned"
CTX = 1024  # the context the other Ollama tests share, so the model is not reloaded between them
OTHER_CTX = 768  # a context no test here loads otherwise: asking for it is a load
HELLO = [{"role": "user", "content": "Say hello to the team."}]
SHORT = {"num_ctx": CTX, "num_predict": 2, "temperature": 0.0}


@pytest.fixture(autouse=True)
def _fresh(double: OllamaDouble) -> Iterator[None]:
    double.clear_faults()
    double.requests.clear()
    double.pullable.clear()
    yield
    double.pullable.clear()


@pytest.fixture
def client(double: OllamaDouble) -> Iterator[ollama.Client]:
    client = ollama.Client(host=double.url, timeout=60)
    yield client
    client.close()


@pytest.fixture
def http(double: OllamaDouble) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=double.url, timeout=60) as client:
        yield client


def chat_body(**changes) -> dict:
    return {"model": MODEL, "messages": HELLO, "options": dict(SHORT), **changes}


def ndjson(response: httpx.Response) -> list[dict]:
    return [json.loads(line) for line in response.text.splitlines()]


# -- 1. unknown model ------------------------------------------------------------------------------------------


def test_chat_with_an_unknown_model_is_404_naming_it_as_asked(client):
    # server/routes.go:2485 (ChatHandler): getModel fails with os.ErrNotExist ->
    # 404 fmt.Sprintf("model '%s' not found", req.Model), the name as the request spelled it.
    for name in ("nope", "nope:7b"):
        with pytest.raises(ollama.ResponseError) as missing:
            client.chat(model=name, messages=HELLO)
        assert (missing.value.status_code, missing.value.error) == (404, f"model '{name}' not found")
    # streaming changes nothing: the 404 is written before any stream starts
    with pytest.raises(ollama.ResponseError) as streamed:
        list(client.chat(model="nope", messages=HELLO, stream=True))
    assert (streamed.value.status_code, streamed.value.error) == (404, "model 'nope' not found")


def test_the_backend_reports_a_model_that_vanished_as_a_failed_request(double):
    # The preflight's `show` (404 "model 'x' not found", server/routes.go:1367) names the pull; a chat that then
    # meets ChatHandler's 404 (:2485) is one failed request, with the server's words.
    with pytest.raises(InputError, match=r"model 'nope' is not on the Ollama server .*ollama pull nope"):
        OllamaBackend("nope", host=double.url, timeout_s=30)
    backend = OllamaBackend("tuned", host=double.url, timeout_s=60)
    backend.model = "gone"
    settings = InferenceSettings(num_ctx=CTX, num_predict=2, temperature=0.0, top_p=1.0, top_k=40, few_shot=0,
                                 prompt_variant="compact", example_selection="static", format="off", seed=0)
    with pytest.raises(RequestFailed, match=r"Ollama error \(HTTP 404\): model 'gone' not found"):
        backend.generate(HELLO, settings, schema={})
    backend.close()


# -- 2. options of the wrong type ------------------------------------------------------------------------------


@pytest.mark.parametrize(("options", "error"), [
    ({"num_ctx": "abc"}, 'option "num_ctx" must be of type integer'),
    ({"num_predict": "8"}, 'option "num_predict" must be of type integer'),  # a string is no number, even "8"
    ({"seed": True}, 'option "seed" must be of type integer'),
    ({"temperature": "hot"}, 'option "temperature" must be of type float32'),
    ({"use_mmap": 1}, 'option "use_mmap" must be of type boolean'),
    ({"stop": "\n"}, 'option "stop" must be of type array'),
    ({"stop": ["\n", 3]}, 'option "stop" must be of an array of strings'),
])
def test_an_option_of_the_wrong_type_is_500_before_any_load(client, double, options, error):
    # api/types.go:991 (Options.FromMap) returns fmt.Errorf("option %q must be of type ...") for a value of the
    # wrong JSON type; scheduleRunner decodes the options before it asks for a runner (server/routes.go:218), and
    # handleScheduleError answers that error 500 with its text (:3118).
    loads = double.loads
    for stream in (False, True):
        with pytest.raises(ollama.ResponseError) as refused:
            answer = client.chat(model=MODEL, messages=HELLO, options={**SHORT, "num_ctx": OTHER_CTX, **options},
                                 stream=stream)
            list(answer) if stream else None
        assert (refused.value.status_code, refused.value.error) == (500, error)
    assert double.loads == loads  # OTHER_CTX was never loaded


def test_numbers_unknown_names_and_null_are_taken_as_ollama_takes_them(client, double):
    # api/types.go:1022-1024: a JSON number for an int option is truncated (int64(t)); :1006-1008 an unknown name
    # is only logged; :1013 a null is skipped.
    answer = client.chat(model=MODEL, messages=HELLO,
                         options={**SHORT, "num_ctx": CTX + 0.9, "no_such_option": "x", "top_k": None})
    assert answer.done and client.ps().models[0].context_length == CTX


def test_a_created_model_with_a_bad_parameter_fails_every_chat_with_500(client):
    # server/create.go:1352 (setParameters) stores parameters as given; modelOptions applies the model's before
    # the request's (server/routes.go:141, :146), so the model's bad value fails even a request that sets it.
    assert client.create("bad-params", from_=MODEL, parameters={"num_ctx": "big"}).status == "success"
    with pytest.raises(ollama.ResponseError) as refused:
        client.chat(model="bad-params", messages=HELLO, options=SHORT)
    assert (refused.value.status_code, refused.value.error) == (500, 'option "num_ctx" must be of type integer')


def test_bad_options_do_not_stop_an_unload(client):
    # server/routes.go:2505: a request with no messages and keep_alive 0 expires the runner and answers "unload"
    # before scheduleRunner (:2639) ever reads the options.
    client.chat(model=MODEL, messages=[], options={"num_ctx": CTX})
    unloaded = client.chat(model=MODEL, messages=[], keep_alive=0, options={"num_ctx": "abc"})
    assert unloaded.done_reason == "unload" and client.ps().models == []


# -- 3. format -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("fmt", "quoted"), [("yaml", r'"\"yaml\""'), (5, '"5"'), (["json"], r'"[\"json\"]"')])
def test_a_format_neither_json_nor_a_schema_fails_in_the_runner_after_the_load(double, http, fmt, quoted):
    # The ollama client refuses such a format itself (pydantic), so httpx sends it.
    # llm/llama_server.go:2320 (llamaServerChatResponseFormat; :1594 for the completion path): a raw format that
    # is not "json", null or "" and does not start with '{' -> fmt.Errorf("invalid format: %q; expected \"json\"
    # or a valid JSON Schema object", format). The runner reads it only once ChatHandler has a loaded runner
    # (scheduleRunner, server/routes.go:2634); handleNativeChat answers the plain error 500 (:2967, :3032), and so
    # does a streamed request, since nothing was written yet (streamResponse, :2116).
    message = f'invalid format: {quoted}; expected "json" or a valid JSON Schema object'
    for stream in (False, True):
        http.post("/api/chat", json={"model": MODEL, "messages": [], "keep_alive": 0})  # unload
        loads = double.loads
        response = http.post("/api/chat", json=chat_body(format=fmt, stream=stream,
                                                          options={**SHORT, "num_ctx": OTHER_CTX}))
        assert (response.status_code, response.json()) == (500, {"error": message})
        assert response.headers["content-type"].startswith("application/json")
        assert double.loads == loads + 1  # loaded first
        (running,) = http.get("/api/ps").json()["models"]
        assert running["context_length"] == OTHER_CTX


def test_a_load_request_never_reads_the_format(http):
    # server/routes.go:2644-2654: with no messages ChatHandler answers done_reason "load" right after scheduling,
    # before any code reads req.Format.
    response = http.post("/api/chat", json=chat_body(messages=[], format="yaml", stream=False))
    assert response.status_code == 200 and response.json()["done_reason"] == "load"


def test_a_schema_no_grammar_can_be_made_of_is_llama_servers_400_relayed(client, double):
    # An object goes to llama-server as the json_schema of response_format (llm/llama_server.go:2328, :2183); when
    # llama-server's converter rejects it, its error body comes back with its status and Ollama relays both:
    # api.StatusError{StatusCode: res.StatusCode, ErrorMessage: s.statusErrorMessage(body)} (:1948, :1782), sent
    # as the reply's status and error (server/routes.go:3030, writeChatResponse :2387). The 400 and the
    # "JSON schema conversion failed" wording are llama.cpp's server (its format_error_response), not in the
    # ollama repository.
    loads = double.loads
    client.chat(model=MODEL, messages=[], keep_alive=0)  # unload
    for stream in (False, True):
        with pytest.raises(ollama.ResponseError) as refused:
            answer = client.chat(model=MODEL, messages=HELLO, format={"type": 5}, options=SHORT, stream=stream)
            list(answer) if stream else None
        assert refused.value.status_code == 400
        body = json.loads(refused.value.error)
        assert body["error"]["code"] == 400 and body["error"]["type"] == "invalid_request_error"
        assert body["error"]["message"].startswith("JSON schema conversion failed:\nUnrecognized schema")
    assert double.loads == loads + 1  # the model was loaded for the first, and kept for the second


# -- 4. pull of an unknown name --------------------------------------------------------------------------------


def test_pulling_an_unknown_name_streams_the_manifest_error_after_pulling_manifest(client, http):
    # server/routes.go:1102 (PullHandler): PullModel sends "pulling manifest" (server/images.go:1021), the
    # registry's 404 is os.ErrNotExist (:1339), returned as "pull model manifest: file does not exist" (:1025) and
    # sent as gin.H{"error": ...} (routes.go:1148); streamResponse (:2097) has already written the 200 and the first
    # line, so the error is the last line.
    response = http.post("/api/pull", json={"model": "nope"})
    assert response.status_code == 200 and response.headers["content-type"] == "application/x-ndjson"
    assert ndjson(response) == [{"status": "pulling manifest"}, {"error": PULL_ERROR}]
    received = []
    with pytest.raises(ollama.ResponseError) as failed:
        for progress in client.pull("nope", stream=True):
            received.append(progress.status)
    assert received == ["pulling manifest"]
    assert (failed.value.status_code, failed.value.error) == (-1, PULL_ERROR)  # a line in a 200 stream: no status


def test_an_unstreamed_pull_of_an_unknown_name_is_500(client):
    # server/routes.go:2070 (waitForStream): an error without a status is answered 500.
    with pytest.raises(ollama.ResponseError) as failed:
        client.pull("nope", stream=False)
    assert (failed.value.status_code, failed.value.error) == (500, PULL_ERROR)


def test_an_unstreamed_pull_answers_its_last_progress_line(client, double):
    # server/routes.go:2070: waitForStream answers the latest ProgressResponse, PullModel's "success".
    double.pullable.add("fresh:1b")
    assert client.pull("fresh:1b", stream=False).status == "success"


def test_the_backends_pull_failure_is_one_line_naming_the_model(double):
    # The streamed error line (above) reaches pipeline/backends/ollama.py as a ResponseError mid-stream.
    seen = []
    with pytest.raises(InputError) as caught:
        OllamaBackend("nope", host=double.url, timeout_s=30, pull=True,
                      on_pull=lambda status, done, total: seen.append(status))
    assert str(caught.value) == f"`ollama pull nope` failed: {PULL_ERROR}; check the model name"
    assert "\n" not in str(caught.value) and seen == ["pulling manifest"]


# -- 5. create from a base the server lacks --------------------------------------------------------------------


def test_create_from_an_unknown_base_fails_as_its_pull_does(client, http):
    # server/create.go:156: parseFromModel (server/model.go:44) pulls a base with no manifest, its progress in the
    # create's stream; the pull's error is sent as gin.H{"error": ...} (create.go:158): streamed (create.go:355),
    # a 200 whose last line is the error; unstreamed (create.go:351, waitForStream), a 500.
    response = http.post("/api/create", json={"model": "orphan", "from": "nope"})
    assert response.status_code == 200
    assert ndjson(response) == [{"status": "pulling manifest"}, {"error": PULL_ERROR}]
    received = []
    with pytest.raises(ollama.ResponseError) as streamed:
        for progress in client.create("orphan", from_="nope", stream=True):
            received.append(progress.status)
    assert received == ["pulling manifest"] and (streamed.value.status_code, streamed.value.error) == (-1, PULL_ERROR)
    with pytest.raises(ollama.ResponseError) as unstreamed:
        client.create("orphan", from_="nope")
    assert (unstreamed.value.status_code, unstreamed.value.error) == (500, PULL_ERROR)
    assert "orphan:latest" not in [m.model for m in client.list().models]


def test_create_from_a_pullable_base_streams_the_pull_then_the_create(client, double):
    # server/model.go:44: PullModel runs with the create's progress function, so its lines (ending in its own
    # "success") come first, then createModel's (server/create.go:883-889).
    double.pullable.add("remote-base:1b")
    statuses = [p.status for p in client.create("from-remote", from_="remote-base:1b", stream=True)]
    assert statuses[0] == "pulling manifest" and statuses.index("success") < len(statuses) - 1
    assert statuses[-2:] == ["writing manifest", "success"]
    assert client.show("from-remote").details.parent_model == "remote-base:1b"


# -- 6. create with an empty system ----------------------------------------------------------------------------


def test_an_empty_system_keeps_the_base_models_system_prompt(client, double):
    # server/create.go:835: createModel calls setSystem only `if r.System != ""`, so the base's system layer,
    # copied with every other base layer (parseFromModel, server/model.go:56-86), stays.
    client.create("with-system", from_=MODEL, system="Answer in French.")
    assert client.create("child", from_="with-system", system="").status == "success"
    assert [r["body"].get("system") for r in double.requests if r["path"] == "/api/create"][-1] == ""  # sent
    assert 'SYSTEM """Answer in French."""' in client.show("child").modelfile  # the client has no `system` field
    parent = client.chat(model="with-system", messages=HELLO, options=SHORT)
    child = client.chat(model="child", messages=HELLO, options=SHORT)
    assert child.prompt_eval_count == parent.prompt_eval_count  # the same system prompt is in the prompt
    replaced = client.create("grandchild", from_="child", system="Be brief.")
    assert replaced.status == "success" and 'SYSTEM """Be brief."""' in client.show("grandchild").modelfile


# -- 7. keep_alive ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("keep_alive", "error"), [
    ("30", 'time: missing unit in duration "30"'),
    ("5 m", 'time: unknown unit " m" in duration "5 m"'),
    ("1d", 'time: unknown unit "d" in duration "1d"'),
    ("", 'time: invalid duration ""'),
    (" 5m", 'time: invalid duration " 5m"'),
])
def test_a_keep_alive_string_without_a_go_duration_unit_is_400(client, keep_alive, error):
    # api/types.go:1259 (Duration.UnmarshalJSON): a string goes through time.ParseDuration, whose error fails the
    # binding of the request: ChatHandler answers 400 with err.Error() (server/routes.go:2447-2449).
    with pytest.raises(ollama.ResponseError) as refused:
        client.chat(model=MODEL, messages=HELLO, options=SHORT, keep_alive=keep_alive)
    assert (refused.value.status_code, refused.value.error) == (400, error)


@pytest.mark.parametrize(("keep_alive", "error"), [
    (True, "Unsupported type: 'bool'"),
    ({"minutes": 5}, "Unsupported type: 'map[string]interface {}'"),
    (["5m"], "Unsupported type: '[]interface {}'"),
])
def test_a_keep_alive_neither_number_nor_string_is_400(http, keep_alive, error):
    # api/types.go:1267: fmt.Errorf("Unsupported type: '%s'", reflect.TypeOf(v)); the client would refuse these.
    response = http.post("/api/chat", json=chat_body(keep_alive=keep_alive, stream=False))
    assert (response.status_code, response.json()) == (400, {"error": error})


def test_a_keep_alive_number_is_seconds_and_a_duration_string_is_read_as_go_reads_it(client):
    # api/types.go:1253-1256: a JSON number is seconds (time.Duration(t * float64(time.Second))); :1259 a string
    # is time.ParseDuration's, "0" alone needing no unit; a negative one keeps the model forever (:1262).
    for keep_alive, seconds in ((30, 30), ("1m30s", 90), ("1.5h", 5400), ("-1s", None)):
        before = datetime.now(timezone.utc)
        assert client.chat(model=MODEL, messages=HELLO, options=SHORT, keep_alive=keep_alive).done
        expires = client.ps().models[0].expires_at
        if seconds is None:
            assert expires.year > before.year + 100
        else:
            assert abs((expires - before).total_seconds() - seconds) < 30
    assert client.chat(model=MODEL, messages=[], keep_alive="0").done_reason == "unload"


def test_go_duration_parsing_matches_time_parse_duration():
    # Go's src/time/format.go ParseDuration and its tests (time_test.go parseDurationTests/ErrorTests).
    ns, s, m, h = 1, 10**9, 60 * 10**9, 3600 * 10**9
    for text, expected in [("0", 0), ("-0", 0), ("+0", 0), ("5s", 5 * s), ("30s", 30 * s), ("1478s", 1478 * s),
                           ("-5s", -5 * s), ("+5s", 5 * s), ("5.0s", 5 * s), ("5.6s", 5 * s + 600_000_000),
                           ("5.s", 5 * s), (".5s", s // 2), ("1.004s", s + 4_000_000), ("10ns", 10 * ns),
                           ("11us", 11_000), ("12µs", 12_000), ("12μs", 12_000), ("13ms", 13_000_000),
                           ("14s", 14 * s), ("15m", 15 * m), ("16h", 16 * h), ("3h30m", 3 * h + 30 * m),
                           ("-2m3.4s", -(2 * m + 3 * s + 400_000_000)), ("9223372036854775807ns", (1 << 63) - 1),
                           ("-9223372036854775808ns", -(1 << 63)), ("0.100000000000000000000h", 6 * m)]:
        assert parse_duration_ns(text) == expected, text
    for text, error in [("", 'time: invalid duration ""'), ("3", 'time: missing unit in duration "3"'),
                        ("-", 'time: invalid duration "-"'), ("s", 'time: invalid duration "s"'),
                        (".", 'time: invalid duration "."'), ("-.", 'time: invalid duration "-."'),
                        (".s", 'time: invalid duration ".s"'), ("+.s", 'time: invalid duration "+.s"'),
                        ("1d", 'time: unknown unit "d" in duration "1d"'),
                        ("\x85\x85", 'time: invalid duration "\\xc2\\x85\\xc2\\x85"'),
                        ("9223372036854775810ns", 'time: invalid duration "9223372036854775810ns"'),
                        ("9223372036854775808ns", 'time: invalid duration "9223372036854775808ns"')]:
        with pytest.raises(ValueError) as caught:
            parse_duration_ns(text)
        assert str(caught.value) == error, text


# -- faults still work alongside ------------------------------------------------------------------------------


def test_injected_faults_still_come_before_the_request_is_read(client, double):
    # Faults are the double's own (no upstream): an http_error fault answers before the model or options are looked
    # at, so it wins over every error above.
    double.inject("http_error", status=503)
    with pytest.raises(ollama.ResponseError) as failed:
        client.chat(model="nope", messages=HELLO, options={"num_ctx": "abc"})
    assert failed.value.status_code == 503
    double.inject("midstream_error")
    with pytest.raises(ollama.ResponseError) as midstream:
        list(client.chat(model=MODEL, messages=HELLO, options={**SHORT, "num_predict": 8}, stream=True))
    assert midstream.value.status_code == -1
    assert client.chat(model=MODEL, messages=HELLO, options=SHORT).done  # the faults are used up
