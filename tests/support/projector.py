"""Running the projector's command line on a test's services, and naming its queues."""

from __future__ import annotations

import os
import subprocess
import sys

from common.settings import Settings
from harness.isolation import settings_env
from harness.processes import ROOT
from tests.support.domains import topology_of
from tests.support.views import ORDER_VIEWS


def projector_cli(
    settings: Settings, *args: str, timeout_s: float = 120
) -> subprocess.CompletedProcess[str]:
    """`python -m projector_worker <args>` on `settings`' services, to its end."""
    return subprocess.run(
        [sys.executable, "-m", "projector_worker", *args],
        cwd=ROOT,
        env={**os.environ, **settings_env(settings)},
        capture_output=True,
        text=True,
        timeout=timeout_s,
        check=False,
    )


def run_rebuild(settings: Settings, *args: str) -> subprocess.CompletedProcess[str]:
    """`python -m projector_worker rebuild <args>`, to its end."""
    return projector_cli(settings, "rebuild", *args)


def order_views_queue(settings: Settings) -> str:
    """The queue of the `order_views` projection."""
    return topology_of(settings).projection_queue(ORDER_VIEWS)
