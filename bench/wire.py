"""Lean wire protocols for the load generator: HTTP/1.1 keep-alive and a Redis subscriber.

A general-purpose client spends more CPU per request than the endpoints under test, and on a
2-core machine every cycle the generator burns is taken from the system. These protocols do
the minimum: requests are prebuilt bytes, responses are split on `Content-Length`, and Redis
pub/sub messages are cut out of the RESP stream without a client library.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import cast

OnResponse = Callable[["HttpConnection", int, bytes], None]
"""Called with the connection, the status code and the body of each complete response."""

OnClosed = Callable[["HttpConnection", Exception | None], None]


class ProtocolError(Exception):
    """The peer sent something this minimal parser does not handle."""


def http_request(
    method: str, path: str, body: bytes | None = None, *, host: str = "bench"
) -> bytes:
    """One HTTP/1.1 keep-alive request as bytes (JSON body when `body` is given)."""
    head = f"{method} {path} HTTP/1.1\r\nHost: {host}\r\n"
    if body is None:
        return (head + "Content-Length: 0\r\n\r\n").encode()
    head += f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    return head.encode() + body


def split_response(buffer: bytes | bytearray) -> tuple[int, bytes, int] | None:
    """`(status, body, consumed)` of the first complete response in `buffer`, or None.

    Only `Content-Length` framing is understood: the servers measured here never chunk.
    """
    head_end = buffer.find(b"\r\n\r\n")
    if head_end < 0:
        return None
    head = bytes(buffer[:head_end]).lower()
    if not head.startswith(b"http/1."):
        raise ProtocolError(f"not an HTTP/1.x response: {head[:40]!r}")
    status = int(head[9:12])
    length = 0
    at = head.find(b"\r\ncontent-length:")
    if at >= 0:
        end = head.find(b"\r\n", at + 2)
        length = int(head[at + 17 : end if end >= 0 else len(head)])
    elif b"\r\ntransfer-encoding:" in head:
        raise ProtocolError("chunked responses are not supported")
    body_start = head_end + 4
    if len(buffer) < body_start + length:
        return None
    return status, bytes(buffer[body_start : body_start + length]), body_start + length


class HttpConnection(asyncio.Protocol):
    """One keep-alive connection; one request in flight at a time (no pipelining)."""

    def __init__(self, on_response: OnResponse, on_closed: OnClosed) -> None:
        self._on_response = on_response
        self._on_closed = on_closed
        self._buffer = bytearray()
        self._transport: asyncio.Transport | None = None
        self.busy = False
        self.sent_at = 0.0
        """When the request in flight was handed to the socket (read just before the write)."""
        self.context: object = None
        """Whatever the caller attached to the request in flight."""

    @classmethod
    async def open(
        cls, host: str, port: int, on_response: OnResponse, on_closed: OnClosed
    ) -> HttpConnection:
        loop = asyncio.get_running_loop()
        _, protocol = await loop.create_connection(lambda: cls(on_response, on_closed), host, port)
        return protocol

    @property
    def is_open(self) -> bool:
        return self._transport is not None and not self._transport.is_closing()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not subclasses of asyncio.Transport, only alike.
        self._transport = cast(asyncio.Transport, transport)

    def send(self, request: bytes, context: object = None) -> None:
        assert self._transport is not None, "not connected"
        assert not self.busy, "one request at a time"
        self.busy = True
        self.context = context
        self.sent_at = time.perf_counter()
        self._transport.write(request)

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        while self._buffer:
            try:
                parsed = split_response(self._buffer)
            except (ProtocolError, ValueError) as exc:
                self.close()
                self._on_closed(self, exc)
                return
            if parsed is None:
                return
            status, body, consumed = parsed
            del self._buffer[:consumed]
            self.busy = False
            self._on_response(self, status, body)

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = None
        self._on_closed(self, exc)

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()


# --- Redis pub/sub ---------------------------------------------------------------------------


def resp_command(*parts: str | bytes) -> bytes:
    """A Redis command as a RESP array of bulk strings."""
    out = [b"*%d\r\n" % len(parts)]
    for part in parts:
        raw = part.encode() if isinstance(part, str) else part
        out.append(b"$%d\r\n%s\r\n" % (len(raw), raw))
    return b"".join(out)


RespValue = bytes | int | None | list["RespValue"]


def parse_resp(buffer: bytes | bytearray, start: int = 0) -> tuple[RespValue, int] | None:
    """One RESP2 value from `buffer[start:]` and the offset after it; None if incomplete."""
    line_end = buffer.find(b"\r\n", start)
    if line_end < 0:
        return None
    kind = buffer[start : start + 1]
    head = bytes(buffer[start + 1 : line_end])
    after = line_end + 2
    if kind in (b"+", b"-"):
        return head, after
    if kind == b":":
        return int(head), after
    if kind == b"$":
        length = int(head)
        if length < 0:
            return None, after
        if len(buffer) < after + length + 2:
            return None
        return bytes(buffer[after : after + length]), after + length + 2
    if kind == b"*":
        count = int(head)
        if count < 0:
            return None, after
        items: list[RespValue] = []
        offset = after
        for _ in range(count):
            parsed = parse_resp(buffer, offset)
            if parsed is None:
                return None
            item, offset = parsed
            items.append(item)
        return items, offset
    raise ProtocolError(f"unexpected RESP type {kind!r}")


class Subscriber(asyncio.Protocol):
    """Subscribes to channels and hands each message payload to `on_message`, with the time
    it arrived (`time.perf_counter()`)."""

    def __init__(self, channels: list[str], on_message: Callable[[bytes, float], None]) -> None:
        self._channels = channels
        self._on_message = on_message
        self._buffer = bytearray()
        self._transport: asyncio.Transport | None = None
        self.subscribed = asyncio.get_running_loop().create_future()
        self.messages = 0

    @classmethod
    async def open(
        cls, host: str, port: int, channels: list[str], on_message: Callable[[bytes, float], None]
    ) -> Subscriber:
        loop = asyncio.get_running_loop()
        _, protocol = await loop.create_connection(lambda: cls(channels, on_message), host, port)
        await asyncio.wait_for(protocol.subscribed, 5)
        return protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)
        self._transport.write(resp_command("SUBSCRIBE", *self._channels))

    def data_received(self, data: bytes) -> None:
        now = time.perf_counter()
        self._buffer += data
        offset = 0
        while True:
            parsed = parse_resp(self._buffer, offset)
            if parsed is None:
                break
            value, offset = parsed
            if isinstance(value, list) and len(value) == 3:
                kind = value[0]
                if kind == b"message" and isinstance(value[2], bytes):
                    self.messages += 1
                    self._on_message(value[2], now)
                elif (
                    kind == b"subscribe"
                    and value[2] == len(self._channels)
                    and not self.subscribed.done()
                ):
                    self.subscribed.set_result(None)
        del self._buffer[:offset]

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = None
        if not self.subscribed.done():
            self.subscribed.set_exception(exc or ConnectionError("redis closed the connection"))

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()
