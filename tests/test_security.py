"""Credentials never reach messages, logs or run tags; nothing listens beyond 127.0.0.1."""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.engines.config import EngineConfig
from pipeline.engines.ollama import OllamaBackend, redact_host
from pipeline.engines.registry import make_backend
from pipeline.errors import InputError, redact_url
from pipeline.testing.ollama_double import OllamaDouble
from tests.conftest import ROOT


@pytest.mark.parametrize("host, shown", [
    ("http://user@ollama.internal:11434", "http://***@ollama.internal:11434"),
    ("http://user:s3cret@ollama.internal:11434", "http://***@ollama.internal:11434"),
    ("https://user:s3cret@ollama.internal/base/path", "https://***@ollama.internal/base/path"),
    ("http://ollama.internal:11434/?token=s3cret", "http://ollama.internal:11434/?token=***"),
    ("http://user:s3cret@ollama.internal/?token=s3cret&keep=1#s3cret",
     "http://***@ollama.internal/?token=***&keep=***#***"),
    ("http://user:s3cret@[fd00::1]:11434", "http://***@[fd00::1]:11434"),
    ("http://[::1]:11434", "http://[::1]:11434"),
    ("user:s3cret@10.0.0.5:11434", "http://***@10.0.0.5:11434"),
    ("127.0.0.1:11434", "http://127.0.0.1:11434"),
    ("http://user:s3c@ret@ollama.internal", "http://***@ollama.internal"),   # an unescaped @ in the password
    ("http://user:s3c/ret@ollama.internal/p", "http://***@ollama.internal/p"),  # an unescaped / in the password
    ("http://user:s3cret@[::1", "http://***@[::1"),  # does not parse: redacted all the same
    ("http://user:s3cret@host:99999999", "http://***@host:99999999"),
    ("http://host/?s3cret", "http://host/?***"),
])
def test_redact_host_strips_credentials_from_any_form(host, shown):
    assert redact_host(host) == shown


# Secrets of upper-case letters and of the characters that may stand unescaped in their part of a URL: a
# password may hold "@", "/", ":", "&" and "="; a query value "@", "/", ":" and "?" ("&" and "=" would start another
# pair); a fragment anything. An unescaped "?" or "#" in a password starts the query or the fragment: no parser can
# tell it from one, so it is left out.
LETTERS = "ABCDEFGHJKLMNPQRSTUVWXYZ"
PASSWORDS = st.text(alphabet=LETTERS + "@/:&=", min_size=4, max_size=16)
VALUES = st.text(alphabet=LETTERS + "@/:?", min_size=4, max_size=16)
FRAGMENTS = st.text(alphabet=LETTERS + "@/:?&=#", min_size=4, max_size=16)


@settings(max_examples=200, derandomize=True, deadline=None)
@given(password=PASSWORDS, token=VALUES, fragment=FRAGMENTS)
def test_no_generated_password_token_or_fragment_survives_redaction(password, token, fragment):
    # Checked on the output, whatever the table above expects. The rest of each host is lower case, digits and
    # runs of at most three of those characters ("://"), so a secret (four or more) found in the output leaked.
    for host in (f"http://user:{password}@ollama.internal:11434", f"ollama.internal:11434/?token={token}",
                 f"https://user:{password}@10.0.0.5/base?token={token}&keep=1#{fragment}"):
        redacted = redact_host(host)
        for secret in (password, token, fragment):
            assert secret not in redacted, (host, redacted)


def test_redact_url_keeps_file_paths_whole():
    assert redact_url("sqlite:////home/a@b/optuna.db") == "sqlite:////home/a@b/optuna.db"
    assert redact_url("postgresql://optuna:s3cret@db:5432/optuna?sslmode=require") == \
        "postgresql://***@db:5432/optuna?sslmode=***"


def test_an_unreachable_host_is_reported_without_its_credentials():
    with pytest.raises(InputError) as caught:
        OllamaBackend("m", host="http://user:s3cret@127.0.0.1:9/?token=t0ken", timeout_s=2)
    assert "http://***@127.0.0.1:9/?token=***" in str(caught.value)
    assert "s3cret" not in str(caught.value) and "t0ken" not in str(caught.value)


@pytest.mark.slow
def test_backend_description_and_choice_carry_no_credentials(engine):
    with OllamaDouble(engine=engine) as double:
        port = double.url.rsplit(":", 1)[1]
        host = f"http://user:s3cret@127.0.0.1:{port}/?token=t0ken"
        backend, choice = make_backend(EngineConfig(backend="ollama", ollama_model="tuned", host=host))
        try:
            tags = backend.describe()
        finally:
            backend.close()
    assert tags["ollama_host"] == f"http://***@127.0.0.1:{port}/?token=***"
    assert tags["model"] == "tuned" and len(tags["model_digest"]) >= 64  # the preflight really ran
    for text in [*tags.values(), choice]:
        assert "s3cret" not in str(text) and "t0ken" not in str(text)


def test_the_ollama_double_listens_on_loopback_only():
    with OllamaDouble() as double:
        assert double._server is not None and double._server.server_address[0] == "127.0.0.1"
        assert double.url.startswith("http://127.0.0.1:")


def test_no_other_module_opens_a_listening_socket():
    listening = re.compile(r"\.bind\(|\.listen\(|create_server\(|HTTPServer\(|serve_forever|0\.0\.0\.0")
    found = {str(path.relative_to(ROOT)) for path in (ROOT / "pipeline").rglob("*.py")
             if listening.search(path.read_text())}
    assert found == {"pipeline/testing/ollama_double.py", "pipeline/engines/process.py"}
    # process.py binds only to find a free loopback port for the llama-server it starts (127.0.0.1, never 0.0.0.0)
    process = (ROOT / "pipeline" / "engines" / "process.py").read_text()
    assert re.findall(r"\.bind\((.*?)\)", process) == ["(HOST, 0"] and 'HOST = "127.0.0.1"' in process
