"""The image installs exactly what CI installed: the service's part of requirements.lock, with
the same versions and hashes, and nothing from version ranges."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_the_runtime_lock_is_the_services_part_of_the_full_lock() -> None:
    check = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "runtime_lock.py"), "--check"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert check.returncode == 0, check.stderr
    pins = (ROOT / "requirements-runtime.lock").read_text().splitlines()
    names = {line.split("==")[0] for line in pins if "==" in line}
    assert {"aio-pika", "asyncpg", "fastapi", "redis", "uvicorn"} <= names
    assert not names & {"pytest", "mypy", "schemathesis", "matplotlib"}


def test_the_image_installs_the_runtime_lock_with_hashes_and_nothing_else() -> None:
    installs = [
        line.strip()
        for line in (ROOT / "Dockerfile").read_text().splitlines()
        if "pip install" in line
    ]
    assert installs[0] == "RUN pip install --require-hashes -r requirements-runtime.lock"
    assert all("--no-deps" in line for line in installs[1:]), installs
