"""The channels and operations of the AsyncAPI document, from the declared topology: a channel
for every queue, one for every route a process or the broker publishes on, and each process's
operations on them."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from common.domain import Registry
from common.messaging.asyncapi.catalogue import AMQP_BINDING_VERSION, MessageCatalogue
from common.messaging.consuming import ATTEMPT_HEADER
from common.messaging.topology import Declarations, QueueDeclaration, QueueRole, Topology

DEFAULT_EXCHANGE = ""
"""The AMQP default exchange: every queue is bound to it by its own name."""

SEND = {"deliveryMode": 2, "mandatory": True, "timestamp": True}
"""Every publish is persistent, mandatory (an unroutable message is an error) and confirmed."""
RECEIVE = {"ack": True}
"""Every consumer acknowledges after the work is durable (or the copy confirmed)."""


class Wiring:
    """The channels of one topology and every process's operations on them."""

    def __init__(
        self,
        plan: Declarations,
        topology: Topology,
        registry: Registry,
        messages: MessageCatalogue,
        vhost: str,
    ) -> None:
        self._plan = plan
        self._topology = topology
        self._vhost = vhost
        self._commands = messages.commands
        self._events = messages.events
        self._registry = registry
        self._exchanges = {e.name: e for e in plan.exchanges}
        self.channels: dict[str, Any] = {}
        self.operations: dict[str, Any] = {}

    def build(self) -> tuple[dict[str, Any], dict[str, Any]]:
        topology = self._topology
        for queue in self._plan.queues:
            self._queue_channel(queue)
        commands = self._route(
            topology.commands_exchange, topology.commands_queue, "commands", self._commands
        )
        self._operation(
            "gateway.sendCommand", "send", commands, "gateway", "Publish an accepted command."
        )
        events = self._route(topology.events_exchange, "", "events", self._events)
        self._operation(
            "relay.sendEvent", "send", events, "relay", "Publish committed events in log order."
        )
        self._operation(
            "command_worker.receiveCommand",
            "receive",
            self._queue_id(topology.commands_queue),
            "command_worker",
            "Decide a command; its events and outcome are committed before the ack.",
        )
        for name, projection in self._registry.projections.items():
            follows = ", ".join(sorted(projection.categories))
            self._operation(
                f"projector_worker.receiveEvent.{name}",
                "receive",
                self._queue_id(topology.projection_queue(name)),
                "projector_worker",
                f"Apply the events of {follows} streams to the `{name}` views; other events "
                "are acknowledged and skipped.",
            )
        for work in topology.work_queues:
            self._failure_routes(work)
        return self.channels, self.operations

    def _failure_routes(self, work: str) -> None:
        topology = self._topology
        consumer = "command_worker" if work == topology.commands_queue else "projector_worker"
        delays = [
            q for q in self._plan.queues if q.work_queue == work and q.role is QueueRole.DELAY
        ]
        retry = self._route(
            topology.retry_exchange,
            self._retry_template(work, delays),
            f"retries of {work}",
            self._messages_of(work),
            parameters={
                "delay": {
                    "enum": [str(q.delay_ms) for q in delays],
                    "description": "The retry's delay in ms: the base delay doubled per attempt.",
                }
            },
        )
        self._operation(
            f"{consumer}.retry.{work}",
            "send",
            retry,
            consumer,
            f"After a transient failure, publish a copy (with `{ATTEMPT_HEADER}`) to the delay "
            "queue of its attempt, then ack the original.",
        )
        dead = self._dead_letter_queue(work)
        dead_route = self._route(
            dead.exchange, dead.routing_key, f"dead letters of {work}", self._messages_of(work)
        )
        self._operation(
            f"{consumer}.deadLetter.{work}",
            "send",
            dead_route,
            consumer,
            "Publish a copy with the failure headers, then ack the original. RabbitMQ uses the "
            "same route when the work queue's delivery limit is reached.",
        )
        self._operation(
            f"dlq.read.{work}",
            "receive",
            self._queue_id(dead.name),
            "dlq",
            "`list` reads dead letters and leaves them; `replay` acks each once its copy is "
            "confirmed.",
        )
        back = self._route(DEFAULT_EXCHANGE, work, f"back to {work}", self._messages_of(work))
        self._operation(
            f"dlq.replay.{work}",
            "send",
            back,
            "dlq",
            "Republish a dead letter to its work queue without the failure headers. Delay "
            "queues use the same route when their TTL expires.",
        )

    def _dead_letter_queue(self, work: str) -> QueueDeclaration:
        return next(
            q for q in self._plan.queues if q.work_queue == work and q.role is QueueRole.DEAD_LETTER
        )

    @staticmethod
    def _retry_template(work: str, delays: Iterable[QueueDeclaration]) -> str:
        """The routing key of the delay queues, `{delay}` in place of each one's delay."""
        template = f"{work}.delay.{{delay}}ms"
        for queue in delays:
            if queue.routing_key != template.replace("{delay}", str(queue.delay_ms)):
                raise ValueError(f"{queue.routing_key} does not follow {template}")
        return template

    def _messages_of(self, work: str) -> list[str]:
        return self._commands if work == self._topology.commands_queue else self._events

    def _channel_messages(self, ids: Iterable[str]) -> dict[str, Any]:
        return {name: {"$ref": f"#/components/messages/{name}"} for name in ids}

    @staticmethod
    def _queue_id(name: str) -> str:
        return f"queue.{name}"

    def _queue_channel(self, queue: QueueDeclaration) -> None:
        descriptions = {
            QueueRole.WORK: "A work queue (quorum): its consumers compete for its messages.",
            QueueRole.DEAD_LETTER: f"The dead letters of `{queue.work_queue}`, with the "
            "failure headers; read by nobody but a person.",
            QueueRole.DELAY: f"Holds a retried message of `{queue.work_queue}` for "
            f"{queue.delay_ms} ms, then RabbitMQ dead-letters it back there through the default "
            "exchange. Nothing consumes it.",
        }
        self.channels[self._queue_id(queue.name)] = {
            "address": queue.name,
            "title": queue.name,
            "description": descriptions[queue.role],
            "messages": self._channel_messages(self._messages_of(queue.work_queue)),
            "bindings": {
                "amqp": {
                    "is": "queue",
                    "queue": {
                        "name": queue.name,
                        "durable": queue.durable,
                        "exclusive": False,
                        "autoDelete": False,
                        "vhost": self._vhost,
                    },
                    "x-arguments": dict(queue.arguments),
                    "x-binding": {"exchange": queue.exchange, "routingKey": queue.routing_key},
                    "bindingVersion": AMQP_BINDING_VERSION,
                }
            },
        }

    def _route(
        self,
        exchange: str,
        routing_key: str,
        role: str,
        messages: list[str],
        parameters: dict[str, Any] | None = None,
    ) -> str:
        declared = self._exchanges.get(exchange)
        kind = declared.type.value if declared is not None else "default"
        key = routing_key.replace(".{delay}ms", "") or "all"
        channel_id = f"route.{exchange or 'default'}.{key}"
        shown = exchange or "(default exchange)"
        channel: dict[str, Any] = {
            "address": routing_key,
            "title": f"{shown} → {routing_key or '(any key)'}",
            "description": f"Publishing to `{shown}` ({kind}): {role}.",
            "messages": self._channel_messages(messages),
            "bindings": {
                "amqp": {
                    "is": "routingKey",
                    "exchange": {
                        "name": exchange,
                        "type": kind,
                        "durable": declared.durable if declared is not None else True,
                        "autoDelete": False,
                        "vhost": self._vhost,
                    },
                    "bindingVersion": AMQP_BINDING_VERSION,
                }
            },
        }
        if parameters:
            channel["parameters"] = parameters
        self.channels[channel_id] = channel
        return channel_id

    def _operation(
        self, operation_id: str, action: str, channel_id: str, process: str, summary: str
    ) -> None:
        channel = self.channels[channel_id]
        self.operations[operation_id] = {
            "action": action,
            "channel": {"$ref": f"#/channels/{channel_id}"},
            "summary": summary,
            "tags": [{"name": process}],
            "messages": [
                {"$ref": f"#/channels/{channel_id}/messages/{name}"} for name in channel["messages"]
            ],
            "bindings": {
                "amqp": {
                    **(SEND if action == "send" else RECEIVE),
                    "bindingVersion": AMQP_BINDING_VERSION,
                }
            },
        }
