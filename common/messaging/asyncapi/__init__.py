"""Self-description of the messaging: an AsyncAPI 3.0.0 document of every exchange, queue,
routing key and message, generated from the declared topology (`topology.declarations`) and the
contracts of the loaded domains, so it cannot describe queues the processes do not declare.

AMQP has two kinds of address, and the document has a channel for each: a *route* (an exchange
and a routing key: what a publisher names) and a *queue* (what a consumer names). Every queue
is one channel with its `queue.declare` arguments and its binding (`x-arguments`,
`x-binding`); each process's operations carry the process's name as a tag.

Payloads are the pydantic models' own JSON schemas (validation mode, as receivers parse them),
under `components/schemas`; an event's payload is the `RecordedEvent` envelope whose `data` is
the event model without its `type`, which travels beside it in the envelope.
"""

from __future__ import annotations

from typing import Any

from common.domain import Registry
from common.messaging.asyncapi.catalogue import message_catalogue
from common.messaging.asyncapi.channels import Wiring
from common.messaging.messages import JSON
from common.messaging.nodes import vhost_of
from common.messaging.topology import Topology, declarations

__all__ = ["ASYNCAPI_VERSION", "PROCESSES", "PROPERTIES", "asyncapi_document", "vhost_of"]

ASYNCAPI_VERSION = "3.0.0"

PROCESSES = {
    "gateway": "Publishes the commands of accepted HTTP requests (`python -m gateway`).",
    "command_worker": "Decides commands and appends their events (`python -m command_worker`).",
    "relay": "Publishes committed events from the event store; runs in the command workers, "
    "one leader at a time.",
    "projector_worker": "Applies events to the Redis views, one queue per projection "
    "(`python -m projector_worker`).",
    "dlq": "An operator's tool: `python -m command_worker dlq list|replay`, "
    "`python -m projector_worker dlq --projection <name> list|replay`.",
}


PROPERTIES = {
    "content_type": JSON,
    "delivery_mode": "2 (persistent)",
    "message_id": "the command id or the event id",
    "correlation_id": "the correlation id, to follow one command through the logs",
    "type": "the command or event type (also `bindings.amqp.messageType`)",
    "timestamp": "when the command was issued, or when the relay published the event",
    "app_id": "`gateway` for commands, `relay` for events",
}
"""The AMQP basic properties every message carries."""


def asyncapi_document(
    registry: Registry, topology: Topology, retry_base_delay_ms: int, vhost: str = "/"
) -> dict[str, Any]:
    """The AsyncAPI document of `topology` carrying the commands and events of `registry`."""
    plan = declarations(topology, retry_base_delay_ms)
    messages = message_catalogue(list(registry.aggregates.values()))
    channels, operations = Wiring(plan, topology, registry, messages, vhost).build()
    prefix = topology.prefix
    return {
        "asyncapi": ASYNCAPI_VERSION,
        "info": {
            "title": f"{prefix.capitalize()} messaging",
            "version": "1.0.0",
            "description": "Commands from the gateway to the command workers, committed events "
            "from the relay to one queue per projection, and the retry and dead-letter queues "
            f"of each, for the domains {', '.join(d.name for d in registry.domains)}. "
            f"Message properties: {_listing(PROPERTIES)}.",
            "tags": [{"name": name, "description": text} for name, text in PROCESSES.items()],
        },
        "servers": {
            "rabbitmq": {
                "host": "{host}",
                "protocol": "amqp",
                "protocolVersion": "0-9-1",
                "description": f"The deployment's RabbitMQ (`AMQP_URL`), virtual host `{vhost}`.",
                "variables": {
                    "host": {
                        "description": "Host and port of `AMQP_URL`.",
                        "examples": ["localhost:5672"],
                    }
                },
            }
        },
        "defaultContentType": JSON,
        "channels": channels,
        "operations": operations,
        "components": {
            "schemas": messages.schemas,
            "messages": messages.messages,
        },
    }


def _listing(items: dict[str, str]) -> str:
    return "; ".join(f"`{name}`: {text}" for name, text in items.items())
