"""The harness's service endpoints under the name the tests import (`harness.isolation`)."""

from harness.isolation import Endpoints

__all__ = ["Endpoints"]
