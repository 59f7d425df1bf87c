"""What a measurement ran on: the engine and model (from the backend), the CPU, the package and the git commit.

Recorded as tags on every run, so that two studies' numbers can be told apart by the machine that made them.
"""

from __future__ import annotations

import platform
import subprocess
from pathlib import Path

import pipeline
from pipeline.engines.base import Backend

__all__ = ["cpu_model", "environment_tags", "git_commit"]


def environment_tags(backend: Backend, config_folder: Path) -> dict[str, str]:
    """The backend's own tags plus the CPU, package version, git commit and backend name."""
    return {**backend.describe(), "cpu": cpu_model(), "package_version": pipeline.__version__,
            "git_commit": git_commit(config_folder), "backend": backend.name}


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def git_commit(folder: Path) -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=folder, capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    return out.stdout.strip() if out.returncode == 0 else "unknown"
