"""The service's HTTP server: uvicorn (its httptools protocol), in a thread of the ingress replica,
on the address the `serve` command was given (Serve's own HTTP proxy is not started).

Serving here rather than behind Serve's proxy keeps a request's body flowing from the socket to
the app as the app reads it: the proxy reads every body as fast as the client sends it, into
memory, whatever the app's limit. What a connection may cost before the app sees its request is
bounded here (`HttpLimits`): the request line and headers' size (414, 431), the time they take to
arrive and a body's pauses (408), and the connections open from one address (429). Those refusals,
and a request uvicorn cannot parse (a malformed Content-Length, request line or header), are
answered in OpenAI's error shape rather than uvicorn's plain text, then the connection closes.
"""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import threading
from dataclasses import dataclass
from http import HTTPStatus

import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from ..realtime.session import MAX_MESSAGE_BYTES
from .openai_api import ApiError

log = logging.getLogger("maxwhisper.service")

KEEP_ALIVE_S = 75  # longer than the usual proxies' idle timeouts (60 s), as Serve's proxy does
TICK_S = 1.0  # uvicorn's housekeeping (its Date header, whether to stop): once a second, not ten times
LINGER_S = 1.0  # a refused request's rest is read and dropped this long, so that its client reads the answer
GRACE_S = 0.1  # a timeout is looked at again this much later, after the event loop has read its sockets
MALFORMED = ApiError(
    400,
    "the request is not valid HTTP/1.1: a malformed request line or header (such as Content-Length)",
    code="invalid_request",
)


@dataclass(frozen=True)
class HttpLimits:
    """What one connection may cost the HTTP server before the app has its request."""

    head_bytes: int = 32 * 2**10  # the request line and headers together: 431 past them
    url_bytes: int = 8 * 2**10  # the request target (path and query): 414 past it
    header_timeout_s: float = 20.0  # from the connection, or a request's first byte, to its headers' end: 408
    body_timeout_s: float = 30.0  # the longest a request's body may pause while the app waits for it: 408
    connections_per_client: int = 64  # open from one address, WebSockets included: 429 past them (0: no limit)


def _refusals(limits: HttpLimits) -> dict[str, ApiError]:
    return {
        "url too long": ApiError(
            414, f"the request's URL is longer than this service's {limits.url_bytes // 2**10} KB", code="url_too_long"
        ),
        "head too large": ApiError(
            431,
            f"the request line and headers are larger than this service's {limits.head_bytes // 2**10} KB",
            code="headers_too_large",
        ),
        "headers late": ApiError(
            408,
            f"the request's headers took longer than this service's {limits.header_timeout_s:g} s to arrive",
            code="request_timeout",
        ),
        "body paused": ApiError(
            408,
            f"the request's body paused longer than this service's {limits.body_timeout_s:g} s",
            code="request_timeout",
        ),
        "too many connections": ApiError(
            429,
            f"this address has {limits.connections_per_client} connections open "
            "to the service, its most: close one and try again",
            code="too_many_connections",
            retry_after=1,
        ),
    }


class _Stop(Exception):
    """Stops the parser in a callback; the refusal is already written."""


def _protocol(limits: HttpLimits):
    """uvicorn's httptools protocol within `limits`, answering in OpenAI's error shape."""
    refusals = _refusals(limits)

    class BoundedProtocol(HttpToolsProtocol):
        def connection_made(self, transport) -> None:
            super().connection_made(transport)
            self.refused = False
            self.awaiting_head, self.head_received, self.timer = True, 0, None
            host = self.client[0] if self.client else None
            peers = sum(
                1 for c in self.connections if c is not self and getattr(c, "client", None) and c.client[0] == host
            )
            if limits.connections_per_client and host is not None and peers >= limits.connections_per_client:
                self.refuse(refusals["too many connections"])
            else:
                self.time_out_in(limits.header_timeout_s)

        def connection_lost(self, exc) -> None:
            self.time_out_in(None)
            super().connection_lost(exc)

        def data_received(self, data: bytes) -> None:
            if self.refused:  # lingering: the refused request's rest is dropped
                return
            if self.awaiting_head:
                self.head_received += len(data)
            super().data_received(data)
            if self.awaiting_head and self.head_received > limits.head_bytes and not self.refused:
                self.refuse(refusals["head too large"])

        # the parser's callbacks

        def on_message_begin(self) -> None:
            super().on_message_begin()
            if self.timer is None:  # a keep-alive connection's next request: its headers' time starts
                self.time_out_in(limits.header_timeout_s)

        def on_url(self, url: bytes) -> None:
            super().on_url(url)
            if len(self.url) > limits.url_bytes:
                self.refuse(refusals["url too long"])  # the rest of this chunk's URL is parsed; no more is read

        def on_headers_complete(self) -> None:
            self.awaiting_head = False
            self.time_out_in(None)
            if len(self.url) + sum(len(name) + len(value) + 4 for name, value in self.headers) > limits.head_bytes:
                self.refuse(refusals["head too large"])
            if self.refused:
                raise _Stop  # no request for the app
            super().on_headers_complete()
            if not (self.parser.should_upgrade() and self._should_upgrade()):
                self.time_out_in(limits.body_timeout_s)

        def on_body(self, body: bytes) -> None:
            super().on_body(body)
            self.time_out_in(limits.body_timeout_s)

        def on_message_complete(self) -> None:
            super().on_message_complete()
            self.time_out_in(None)
            self.awaiting_head, self.head_received = True, 0

        # refusals

        def time_out_in(self, seconds: float | None, last_look: bool = False) -> None:
            """Time the connection out in `seconds` (None: not)."""
            if self.timer is not None:
                self.timer.cancel()
            self.timer = None if seconds is None else self.loop.call_later(seconds, self.timed_out, last_look)

        def timed_out(self, last_look: bool) -> None:
            self.timer = None
            if not last_look:  # once more after the loop has read its sockets: a busy loop may have left bytes there
                self.time_out_in(GRACE_S, last_look=True)
            elif self.flow.read_paused and not self.awaiting_head:  # the app is not reading the body yet
                self.time_out_in(limits.body_timeout_s)
            elif self.awaiting_head and self.head_received == 0:  # no request begun: close, answering none
                self.transport.close()
            elif self.cycle is not None and self.cycle.response_started and not self.awaiting_head:
                self.transport.close()
            else:
                self.refuse(refusals["headers late" if self.awaiting_head else "body paused"])

        def refuse(self, error: ApiError) -> None:
            """Answer `error` and close, after reading and dropping what the client still sends for LINGER_S."""
            if self.refused or self.transport.is_closing():
                return
            self.refused = True
            self.time_out_in(None)
            if self.cycle is not None and not self.cycle.response_complete:
                self.cycle.disconnected = True  # the app's request ends here: it gets http.disconnect
                self.cycle.message_event.set()
            body = json.dumps(error.body()).encode()
            head = [
                b"HTTP/1.1 %d %s" % (error.status, HTTPStatus(error.status).phrase.encode()),
                b"content-type: application/json",
                b"content-length: %d" % len(body),
                b"connection: close",
            ]
            if error.retry_after:
                head.append(b"retry-after: %d" % error.retry_after)
            self.transport.write(b"\r\n".join(head) + b"\r\n\r\n" + body)
            self.flow.resume_reading()
            self.loop.call_later(LINGER_S, self.transport.close)

        def send_400_response(self, msg: str) -> None:
            self.refuse(MALFORMED)  # nothing more where a refusal stopped the parser

    return BoundedProtocol


def listening_socket(host: str, port: int) -> socket.socket:
    """A socket bound to (host, port), or OSError saying the address is taken or not this machine's."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if family == socket.AF_INET6:
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    try:
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    return sock


class _Server(uvicorn.Server):
    """uvicorn's server with its housekeeping once a TICK_S (ten times a second in uvicorn's): an idle
    service's wake-ups. The Date header keeps its resolution of a second; a stop is seen within TICK_S."""

    async def main_loop(self) -> None:
        counter = 0  # uvicorn's tick count (tenths of a second): a multiple of ten updates the Date header
        while not await self.on_tick(counter):
            counter = (counter + round(TICK_S * 10)) % 864000
            await asyncio.sleep(TICK_S)


class Front:
    """Serves the ASGI `app` on (host, port) from a thread of this process, with its own event loop."""

    def __init__(self, app, host: str, port: int, limits: HttpLimits = HttpLimits()):
        self._socket = listening_socket(host, port)
        config = uvicorn.Config(
            app,
            http=_protocol(limits),
            ws="websockets-sansio",
            ws_max_size=MAX_MESSAGE_BYTES,
            lifespan="on",
            access_log=False,
            log_level="warning",
            timeout_keep_alive=KEEP_ALIVE_S,
            server_header=False,
        )
        self.server = _Server(config)
        self._thread = threading.Thread(target=self._run, name="http", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            asyncio.run(self.server.serve(sockets=[self._socket]))
        except Exception:  # noqa: BLE001 - logged; the replica's health check then fails and Serve replaces it
            log.exception("the HTTP server stopped")

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()
