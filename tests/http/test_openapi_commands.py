"""The OpenAPI document states exactly what the command routes take: every request its schemas
allow is accepted (202, the command queued), every request they forbid is refused (422, nothing
queued). Schemathesis draws both kinds from `/openapi.json` for every command route of every
loaded domain: boundary values of each constraint (its coverage phase, deterministic) and random
ones (its positive and negative modes). They are sent in process to a gateway whose publisher
records commands instead of sending them (`tests/support/offline.py`).
"""

from __future__ import annotations

from typing import Any

import pytest
import schemathesis
from fastapi import FastAPI
from fastapi.routing import APIRoute
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import negative_data_rejection, not_a_server_error
from schemathesis.config import SchemathesisConfig
from schemathesis.core.failures import FailureGroup
from schemathesis.generation import GenerationMode

from common.domain import load_domains
from tests.support.offline import RecordingPublisher, accepting_app, offline_settings

DOMAINS = "orders,tests.domains.tickets"
"""Every domain the gateway can load: `orders`, and the test domain that proves the seam."""
EXAMPLES = 15
"""Random requests per route and mode (besides the boundary values): seconds in all."""
CONFIG = SchemathesisConfig.from_dict(
    {"checks": {"negative_data_rejection": {"expected-statuses": ["422"]}}}
)


@pytest.fixture(scope="module")
def gateway() -> tuple[FastAPI, RecordingPublisher]:
    return accepting_app(offline_settings(domains=DOMAINS))


@pytest.fixture(scope="module")
def schema(gateway: tuple[FastAPI, RecordingPublisher]) -> Any:
    return schemathesis.openapi.from_asgi("/openapi.json", gateway[0], config=CONFIG)


@pytest.fixture(scope="module")
def operations(schema: Any) -> list[Any]:
    """The document's command operations: those answering 202."""
    found = [result.ok() for result in schema.get_all_operations()]
    return [op for op in found if "202" in op.definition.raw["responses"]]


def test_the_document_has_every_command_route_of_every_domain(operations: list[Any]) -> None:
    routes = {
        f"{method} {route.path}"
        for router in load_domains(DOMAINS).routers()
        for route in router.routes
        if isinstance(route, APIRoute) and route.status_code == 202
        for method in route.methods
    }
    assert {op.label for op in operations} == routes
    assert {"POST /orders", "DELETE /orders/{order_id}", "POST /tickets"} <= routes


def _send(case: schemathesis.Case, publisher: RecordingPublisher) -> bool:
    """Send `case` and check the answer its mode calls for; whether the gateway refused it."""
    queued = len(publisher.published)
    response = case.call()
    case.validate_response(response, checks=[not_a_server_error])
    request = f"{case.method} {case.formatted_path} {case.query} {case.headers} {case.body!r}"
    if case.meta is not None and case.meta.generation.mode is GenerationMode.POSITIVE:
        assert response.status_code == 202, f"{request}\n{response.text}"
        assert len(publisher.published) == queued + 1
        return False
    # 422, unless schemathesis sees that the request is valid as sent (an unknown header or
    # query parameter: the document cannot forbid those) or probes something besides the
    # document (another method: 405; another media type: 415).
    case.validate_response(response, checks=[negative_data_rejection])
    if response.status_code != 422:
        return False
    assert len(publisher.published) == queued, request
    return True


def _refused_too_few(label: str, refused: int, invalid: int) -> list[str]:
    # Most invalid requests are refused: the negative side is not vacuous.
    return (
        [f"{label}: {refused} of {invalid} invalid requests refused"]
        if refused < invalid // 2
        else []
    )


def test_boundary_requests_are_answered_as_the_document_says(
    gateway: tuple[FastAPI, RecordingPublisher], schema: Any, operations: list[Any]
) -> None:
    """Each constraint at and just past its limits (schemathesis' coverage phase): a valid
    request, then ones that each break one thing in it."""
    _, publisher = gateway
    failures = []
    for operation in operations:
        cases = list(
            schema.iter_coverage_cases(
                operation,
                generation_modes=list(GenerationMode),
                generation_config=schema.config.generation_for(operation=operation),
            )
        )
        invalid = sum(case.meta.generation.mode is GenerationMode.NEGATIVE for case in cases)
        refused = 0
        try:
            for case in cases:
                refused += _send(case, publisher)
        except (AssertionError, FailureGroup) as exc:
            failures.append(f"{operation.label}: {exc}")
            continue
        failures += _refused_too_few(operation.label, refused, invalid)
    assert not failures, "\n\n".join(failures)


@pytest.mark.parametrize(
    "mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE], ids=lambda m: m.value
)
def test_random_requests_are_answered_as_the_document_says(
    gateway: tuple[FastAPI, RecordingPublisher], operations: list[Any], mode: GenerationMode
) -> None:
    """Requests drawn from the document (positive) or against it (negative), a few per route:
    202 and queued, or 422 and nothing queued."""
    _, publisher = gateway
    failures = []
    for operation in operations:
        sent = refused = 0

        @given(case=operation.as_strategy(generation_mode=mode))
        @settings(
            max_examples=EXAMPLES,
            deadline=None,
            database=None,
            derandomize=True,
            suppress_health_check=list(HealthCheck),
        )
        def send(case: schemathesis.Case) -> None:
            nonlocal sent, refused
            sent += 1
            refused += _send(case, publisher)

        try:
            send()
        except (AssertionError, FailureGroup) as exc:
            failures.append(f"{operation.label} ({mode.value}): {exc}")
            continue
        if mode is GenerationMode.NEGATIVE:
            failures += _refused_too_few(operation.label, refused, sent)
    assert not failures, "\n\n".join(failures)
