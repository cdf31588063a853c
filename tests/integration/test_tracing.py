"""One command, one trace: the real processes, each writing its finished spans to a file, and
the spans of one command followed from the HTTP request to every projection's Redis write."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from common.settings import Settings
from harness.processes import Processes
from tests.support.bodies import ORDER
from tests.support.domains import projection_names, topology_of
from tests.support.events import until

pytestmark = pytest.mark.integration

TRACED = {"OTEL_BSP_SCHEDULE_DELAY": "50"}
"""Export finished spans every 50 ms, not every 5 s."""


def spans_in(directory: Path) -> list[dict[str, Any]]:
    """Every span the processes wrote so far (a line being written is left for later)."""
    spans = []
    for path in directory.glob("*.jsonl"):
        for line in path.read_text().splitlines():
            try:
                spans.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return spans


def append_stream(trace: list[dict[str, Any]], command_id: str) -> str:
    """The stream the command appended to, from its append span."""
    append = next(s for s in trace if s["attributes"].get("cqrs.command_id") == command_id)
    stream: str = append["attributes"]["cqrs.stream_id"]
    assert stream.startswith("Order-"), stream
    return stream


def chain(spans: dict[str, dict[str, Any]], span: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """`span`, its parent, its parent's parent... up to the root."""
    while span is not None:
        yield span
        parent = span["parent_span_id"]
        span = spans.get(parent) if parent else None  # type: ignore[assignment]


async def test_one_command_is_one_trace_across_every_process(
    processes: Processes, isolated_settings: Settings, tmp_path: Path
) -> None:
    def traced(name: str) -> dict[str, str]:
        return {**TRACED, "TRACES_FILE": str(tmp_path / f"{name}.jsonl")}

    processes.start("command_worker", extra_env=traced("command_worker"))
    processes.start("projector_worker", extra_env=traced("projector"))
    gateway = processes.start("gateway", extra_env=traced("gateway"))
    topology = topology_of(isolated_settings)
    projections = projection_names()

    async with httpx.AsyncClient(base_url=gateway.base_url, timeout=20) as http:
        response = await http.post("/orders", json=ORDER, headers={"Prefer": "wait=10"})
    assert response.status_code == 201, response.text
    command_id = response.json()["command_id"]

    def the_trace() -> list[dict[str, Any]] | None:
        spans = spans_in(tmp_path)
        appends = [s for s in spans if s["attributes"].get("cqrs.command_id") == command_id]
        if not appends:
            return None
        trace = [s for s in spans if s["trace_id"] == appends[0]["trace_id"]]
        written = {s["attributes"].get("cqrs.projection") for s in trace}
        batches = {link["span_id"] for link in appends[0]["links"]}
        batch_seen = any(s["span_id"] in batches for s in spans)
        return trace if set(projections) <= written and batch_seen else None

    async def found() -> list[dict[str, Any]] | None:
        return the_trace()

    trace = await until(found, 20, "the command's spans from every process")
    by_id = {s["span_id"]: s for s in trace}

    # One root: the gateway's request.
    roots = [s for s in trace if s["parent_span_id"] is None]
    assert [(r["service"], r["kind"], r["name"]) for r in roots] == [
        ("gateway", "SERVER", "POST /orders")
    ]
    assert {s["service"] for s in trace} == {"gateway", "command-worker", "projector"}

    # Each projection's Redis write nests, through every hop, up to that request.
    for projection in projections:
        write = next(s for s in trace if s["attributes"].get("cqrs.projection") == projection)
        hops = [
            (s["service"], s["kind"], s["name"])
            for s in chain(by_id, write)
            if s["kind"] != "INTERNAL" or s["name"].startswith("append ")
        ]
        assert hops == [
            ("projector", "CLIENT", f"redis apply {projection}"),
            ("projector", "CONSUMER", f"process {topology.projection_queue(projection)}"),
            ("command-worker", "PRODUCER", f"publish {topology.events_exchange}"),
            ("command-worker", "INTERNAL", f"append {append_stream(trace, command_id)}"),
            ("command-worker", "CONSUMER", f"process {topology.commands_queue}"),
            ("gateway", "PRODUCER", f"publish {topology.commands_queue}"),
            ("gateway", "SERVER", "POST /orders"),
        ], projection
        # Each hop started after the one that caused it.
        starts = [s["start"] for s in chain(by_id, write)]
        assert starts == sorted(starts, reverse=True), projection

    # The append is linked to the batch it joined, and the batch to the command's consume span.
    append = next(s for s in trace if s["attributes"].get("cqrs.command_id") == command_id)
    assert append["attributes"]["cqrs.status"] == "succeeded"
    all_spans = {s["span_id"]: s for s in spans_in(tmp_path)}
    (link,) = append["links"]
    batch = all_spans[link["span_id"]]
    assert batch["name"] == "command batch"
    assert batch["trace_id"] != append["trace_id"]
    consume = by_id[append["parent_span_id"]]
    assert {"trace_id": consume["trace_id"], "span_id": consume["span_id"]} in batch["links"]
