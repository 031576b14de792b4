"""The service's HTTP server: uvicorn, in a thread of the ingress replica, on the address the
`serve` command was given (Serve's own HTTP proxy is not started).

Serving here rather than behind Serve's proxy keeps a request's body flowing from the socket to
the app as the app reads it: the proxy reads every body as fast as the client sends it, into
memory, whatever the app's limit. A request uvicorn cannot parse (a malformed Content-Length,
request line or header) is answered in OpenAI's error shape rather than uvicorn's plain text.
"""
from __future__ import annotations

import asyncio
import json
import logging
import socket
import threading

import uvicorn

from ..realtime.session import MAX_MESSAGE_BYTES
from .openai_api import ApiError

log = logging.getLogger("maxwhisper.service")

KEEP_ALIVE_S = 75  # longer than the usual proxies' idle timeouts (60 s), as Serve's proxy does
MALFORMED = ApiError(400, "the request is not valid HTTP/1.1: a malformed request line or header (such as "
                          "Content-Length)", code="invalid_request")


def _protocol():
    """uvicorn's HTTP protocol (httptools where installed, else h11) answering what it cannot
    parse with OpenAI's error shape."""
    try:
        from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol as Base
    except ImportError:
        from uvicorn.protocols.http.h11_impl import H11Protocol as Base

    class OpenAIErrorsProtocol(Base):
        def send_400_response(self, msg: str) -> None:
            body = json.dumps(MALFORMED.body()).encode()
            self.transport.write(b"HTTP/1.1 400 Bad Request\r\ncontent-type: application/json\r\n"
                                 b"content-length: %d\r\nconnection: close\r\n\r\n%s" % (len(body), body))
            self.transport.close()

    return OpenAIErrorsProtocol


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


class Front:
    """Serves the ASGI `app` on (host, port) from a thread of this process, with its own event loop."""

    def __init__(self, app, host: str, port: int):
        self._socket = listening_socket(host, port)
        config = uvicorn.Config(app, http=_protocol(), ws="websockets-sansio", ws_max_size=MAX_MESSAGE_BYTES,
                                lifespan="on", access_log=False,
                                log_level="warning", timeout_keep_alive=KEEP_ALIVE_S, server_header=False)
        self.server = uvicorn.Server(config)
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
