"""ruff and mypy (strict) stay clean: the suite fails the moment they do not."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=300)


def test_ruff() -> None:
    result = run("ruff", "check", "--no-cache", ".")
    assert result.returncode == 0, result.stdout + result.stderr


def test_mypy_strict_on_the_packages() -> None:
    result = run("mypy", "--no-incremental", "client/podfn", "platform/podfn_platform",
                 "runtime/podfn_runtime")
    assert result.returncode == 0, result.stdout + result.stderr
