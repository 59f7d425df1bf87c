"""The processes a test starts (servers, workers), each in its own process group and stopped at teardown
whatever failed: the ``processes`` fixture (tests/conftest.py) holds them."""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import Sequence
from typing import Any

STOP_TIMEOUT_S = 15.0


def stop(process: subprocess.Popen, *, timeout: float = STOP_TIMEOUT_S) -> None:
    """Terminate the process's whole group (``mlflow server`` runs uvicorn as a child), then kill whatever is
    left; nothing of it is running when this returns."""
    try:
        os.killpg(process.pid, signal.SIGTERM)
    except ProcessLookupError:
        pass
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        pass
    try:
        os.killpg(process.pid, signal.SIGKILL)  # leftovers of a hung shutdown; an empty group raises
    except ProcessLookupError:
        pass
    process.wait(timeout=timeout)


class Processes:
    """Start processes in new sessions (their own process groups) and stop every one at the end."""

    def __init__(self) -> None:
        self.started: list[subprocess.Popen] = []

    def start(self, command: Sequence[str], **options: Any) -> subprocess.Popen:
        process = subprocess.Popen(list(command), start_new_session=True, **options)
        self.started.append(process)
        return process

    def stop_all(self) -> None:
        for process in reversed(self.started):
            stop(process)
