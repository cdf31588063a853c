"""The harness's process launcher under the names the tests import (`harness.processes`)."""

from harness.processes import ROOT, Proc, free_port, http_status, wait_for
from harness.processes import Processes as ProcessFactory
from harness.processes import processes as process_factory

__all__ = [
    "ROOT",
    "Proc",
    "ProcessFactory",
    "free_port",
    "http_status",
    "process_factory",
    "wait_for",
]
