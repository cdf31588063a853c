"""OpenTelemetry traces of a command from the HTTP request to the Redis view.

One trace per command: the gateway's request and its publish, the command worker's consume and
the append (linked to the batch it joined), the relay's publish, then each projection's consume
and its Redis write. The context travels in the AMQP headers (W3C `traceparent`) and, across the
commit, in the event's metadata, so the relay, which reads events back from the store, continues
the trace of the command that caused them.

Off unless configured, by the standard variables (`OTEL_EXPORTER_OTLP_ENDPOINT` or
`OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`, `OTEL_TRACES_EXPORTER`, `OTEL_SERVICE_NAME`,
`OTEL_TRACES_SAMPLER`, `OTEL_SDK_DISABLED`, ...) or by `TRACES_FILE` (spans as JSON lines, for
tests and a look without a collector). When off, nothing is instrumented and every helper here
returns at its first line: `enabled()` is checked before any span is made.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Iterator, Mapping, MutableMapping, Sequence
from contextlib import contextmanager
from typing import Any

import orjson
from opentelemetry import propagate, trace
from opentelemetry.context import Context
from opentelemetry.sdk.resources import SERVICE_NAME, Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    ConsoleSpanExporter,
    SpanExporter,
    SpanExportResult,
)
from opentelemetry.sdk.trace.sampling import Decision, Sampler, SamplingResult
from opentelemetry.trace import Link, Span, SpanKind, Status, StatusCode, TraceState
from opentelemetry.util.types import Attributes

log = logging.getLogger(__name__)

_state: dict[str, Any] = {"provider": None}
"""The process's tracer provider once `configure_tracing` turned tracing on."""

TRACEPARENT = "traceparent"
TRACESTATE = "tracestate"
TRACEPARENTS = "traceparents"
"""On a message of several events: each event's `traceparent`, in order."""


def enabled() -> bool:
    """Whether this process records spans (the one check every helper makes first)."""
    return _state["provider"] is not None


def wanted(environ: Mapping[str, str], traces_file: str | None) -> list[str]:
    """The exporters the configuration asks for: `otlp`, `console`, `file`; none means off."""
    if environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return []
    names = [
        name.strip().lower()
        for name in environ.get("OTEL_TRACES_EXPORTER", "").split(",")
        if name.strip() and name.strip().lower() != "none"
    ]
    endpoint = environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or environ.get(
        "OTEL_EXPORTER_OTLP_ENDPOINT"
    )
    if not names and endpoint and "OTEL_TRACES_EXPORTER" not in environ:
        names = ["otlp"]
    if traces_file:
        names.append("file")
    return list(dict.fromkeys(names))


class JsonLinesExporter(SpanExporter):
    """Appends each finished span to a file as one JSON object per line."""

    def __init__(self, path: str) -> None:
        self._path = path
        self._lock = threading.Lock()

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        lines = b"".join(orjson.dumps(span_record(span)) + b"\n" for span in spans)
        with self._lock, open(self._path, "ab") as out:
            out.write(lines)
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        pass


def span_record(span: ReadableSpan) -> dict[str, Any]:
    """A finished span as plain JSON: ids in hex, times in nanoseconds since the epoch."""
    context = span.get_span_context()
    assert context is not None
    parent = span.parent
    return {
        "name": span.name,
        "service": span.resource.attributes.get(SERVICE_NAME),
        "trace_id": format(context.trace_id, "032x"),
        "span_id": format(context.span_id, "016x"),
        "parent_span_id": format(parent.span_id, "016x") if parent is not None else None,
        "kind": span.kind.name,
        "start": span.start_time,
        "end": span.end_time,
        "status": span.status.status_code.name,
        "attributes": dict(span.attributes or {}),
        "links": [
            {
                "trace_id": format(link.context.trace_id, "032x"),
                "span_id": format(link.context.span_id, "016x"),
            }
            for link in span.links
        ],
    }


class WithinTraces(Sampler):
    """`sampler`, except that a client call (a query, a Redis command) made outside any trace
    is not recorded: the probes, the relay's polls and the start-up's schema checks would
    otherwise each be a trace of one span, drowning the commands' traces."""

    def __init__(self, sampler: Sampler) -> None:
        self._sampler = sampler

    def should_sample(
        self,
        parent_context: Context | None,
        trace_id: int,
        name: str,
        kind: SpanKind | None = None,
        attributes: Attributes = None,
        links: Sequence[Link] | None = None,
        trace_state: TraceState | None = None,
    ) -> SamplingResult:
        if kind is SpanKind.CLIENT and not links:
            parent = trace.get_current_span(parent_context).get_span_context()
            if not parent.is_valid:
                return SamplingResult(Decision.DROP)
        return self._sampler.should_sample(
            parent_context, trace_id, name, kind, attributes, links, trace_state
        )

    def get_description(self) -> str:
        return f"WithinTraces({self._sampler.get_description()})"


def _exporter(name: str, traces_file: str | None) -> SpanExporter | None:
    if name == "otlp":
        protocol = os.environ.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL") or os.environ.get(
            "OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"
        )
        if protocol != "http/protobuf":
            log.warning("OTLP over %s is not supported here: using http/protobuf", protocol)
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        return OTLPSpanExporter()
    if name == "console":
        return ConsoleSpanExporter()
    if name == "file" and traces_file:
        return JsonLinesExporter(traces_file)
    log.warning("unknown trace exporter %r in OTEL_TRACES_EXPORTER: ignored", name)
    return None


def configure_tracing(default_service: str, traces_file: str | None = None) -> bool:
    """Turn tracing on if the environment asks for it (see the module's docstring): the SDK,
    its exporters, and the instrumentation of asyncpg and redis-py. Whether it is on."""
    exporters = [
        exporter
        for name in wanted(os.environ, traces_file)
        if (exporter := _exporter(name, traces_file)) is not None
    ]
    if not exporters:
        return False
    service = os.environ.get("OTEL_SERVICE_NAME") or default_service
    provider = TracerProvider(resource=Resource.create({SERVICE_NAME: service}))
    # The sampler the OTEL_TRACES_SAMPLER variables chose, without orphan client calls.
    provider.sampler = WithinTraces(provider.sampler)
    for exporter in exporters:
        provider.add_span_processor(BatchSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
    _state["provider"] = provider
    from opentelemetry.instrumentation.asyncpg import AsyncPGInstrumentor
    from opentelemetry.instrumentation.redis import RedisInstrumentor

    AsyncPGInstrumentor().instrument()  # type: ignore[no-untyped-call]
    RedisInstrumentor().instrument()
    log.info(
        "tracing on: service %s, exporting to %s",
        service,
        ", ".join(type(e).__name__ for e in exporters),
    )
    return True


def shutdown_tracing() -> None:
    """Export what is buffered (at the end of a process)."""
    provider = _state["provider"]
    if provider is not None:
        provider.shutdown()


def tracer() -> trace.Tracer:
    return trace.get_tracer("cqrs")


def inject(headers: MutableMapping[str, Any], context: Context | None = None) -> None:
    """Put the current (or `context`'s) span into `headers` as `traceparent`/`tracestate`."""
    propagate.inject(headers, context=context)


def extract(headers: Mapping[str, Any] | None) -> Context:
    """The context that `headers` carry (an empty one when they carry none)."""
    carrier = {
        key: value
        for key in (TRACEPARENT, TRACESTATE)
        if isinstance(value := (headers or {}).get(key), str)
    }
    return propagate.extract(carrier)


def traceparent_of(span: Span) -> str | None:
    """`span` as a W3C `traceparent` value (to keep in an event's metadata)."""
    carrier: dict[str, str] = {}
    propagate.inject(carrier, context=trace.set_span_in_context(span))
    return carrier.get(TRACEPARENT)


def context_of(traceparent: str | None) -> Context:
    return extract({TRACEPARENT: traceparent} if traceparent else None)


@contextmanager
def consuming(queue: str, headers: Mapping[str, Any] | None) -> Iterator[Span]:
    """The span of handling one message of `queue`, child of the span that sent it."""
    with tracer().start_as_current_span(
        f"process {queue}",
        context=extract(headers),
        kind=SpanKind.CONSUMER,
        attributes={
            "messaging.system": "rabbitmq",
            "messaging.operation.type": "process",
            "messaging.destination.name": queue,
        },
    ) as span:
        yield span


@contextmanager
def redis_write(projection: str, stream_id: str) -> Iterator[Span]:
    """The span of a projection's write of one event to Redis (one script call, pipelined
    with others' on a kept connection, which redis-py's instrumentation does not see)."""
    with tracer().start_as_current_span(
        f"redis apply {projection}",
        kind=SpanKind.CLIENT,
        attributes={
            "db.system.name": "redis",
            "db.operation.name": "EVALSHA",
            "cqrs.projection": projection,
            "cqrs.stream_id": stream_id,
        },
    ) as span:
        yield span


def start_publish(
    destination: str, parent: Context | None = None, attributes: Mapping[str, Any] | None = None
) -> Span:
    """A producer span for one message (the caller injects it into the headers, ends it)."""
    return tracer().start_span(
        f"publish {destination}",
        context=parent,
        kind=SpanKind.PRODUCER,
        attributes={
            "messaging.system": "rabbitmq",
            "messaging.operation.type": "send",
            "messaging.destination.name": destination,
            **(attributes or {}),
        },
    )


def links_to(contexts: Sequence[Context]) -> list[Link]:
    """Links to the spans current in `contexts` (a batch's to the commands that joined it)."""
    links = []
    for context in contexts:
        span_context = trace.get_current_span(context).get_span_context()
        if span_context.is_valid:
            links.append(Link(span_context))
    return links


def end(span: Span, error: BaseException | None = None, end_time: int | None = None) -> None:
    if error is not None:
        span.record_exception(error)
        span.set_status(Status(StatusCode.ERROR, str(error)))
    span.end(end_time=end_time)
