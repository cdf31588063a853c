"""When tracing is on, and what it keeps: the configuration read from the standard variables,
the sampler that leaves out client calls made outside any trace, and events that carry no
trace context when tracing is off."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace.sampling import ALWAYS_ON, Decision
from opentelemetry.trace import NonRecordingSpan, SpanContext, SpanKind, TraceFlags

from common.contracts.envelopes import EventMetadata
from common.observability.tracing import WithinTraces, enabled, wanted


@pytest.mark.parametrize(
    ("environ", "traces_file", "exporters"),
    [
        ({}, None, []),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"}, None, ["otlp"]),
        ({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://c:4318/v1/traces"}, None, ["otlp"]),
        ({"OTEL_TRACES_EXPORTER": "console"}, None, ["console"]),
        ({"OTEL_TRACES_EXPORTER": "none", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://c"}, None, []),
        ({"OTEL_TRACES_EXPORTER": "otlp,console"}, "spans.jsonl", ["otlp", "console", "file"]),
        ({}, "spans.jsonl", ["file"]),
        (
            {"OTEL_SDK_DISABLED": "true", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://c"},
            "spans.jsonl",
            [],
        ),
    ],
)
def test_tracing_is_on_only_when_configured(
    environ: dict[str, str], traces_file: str | None, exporters: list[str]
) -> None:
    assert wanted(environ, traces_file) == exporters


def test_the_tests_run_with_tracing_off() -> None:
    assert not enabled()


def _parent() -> trace.Span:
    return NonRecordingSpan(
        SpanContext(trace_id=1, span_id=2, is_remote=True, trace_flags=TraceFlags.SAMPLED)
    )


def test_client_calls_outside_a_trace_are_dropped_and_the_rest_sampled() -> None:
    sampler = WithinTraces(ALWAYS_ON)
    inside = trace.set_span_in_context(_parent())
    decide = sampler.should_sample
    assert decide(None, 7, "SELECT", SpanKind.CLIENT).decision is Decision.DROP
    assert decide(inside, 7, "SELECT", SpanKind.CLIENT).decision is Decision.RECORD_AND_SAMPLE
    assert decide(None, 7, "POST /orders", SpanKind.SERVER).decision is Decision.RECORD_AND_SAMPLE
    assert decide(None, 7, "command batch").decision is Decision.RECORD_AND_SAMPLE


def test_an_event_without_trace_context_keeps_its_json_unchanged() -> None:
    fields = {
        "command_id": uuid.uuid4(),
        "correlation_id": uuid.uuid4(),
        "causation_id": uuid.uuid4(),
        "occurred_at": datetime.now(UTC),
    }
    assert "traceparent" not in EventMetadata(**fields).model_dump_json()
    traced = EventMetadata(**fields, traceparent="00-" + "1" * 32 + "-" + "2" * 16 + "-01")
    assert EventMetadata.model_validate_json(traced.model_dump_json()) == traced
