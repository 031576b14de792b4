"""Who may use the service: API keys, the Host a request names, the Origin of a browser page.

`AccessPolicy.refusal(scope)` judges an ASGI request or WebSocket handshake before the app sees it;
`guard(app, policy)` wraps an ASGI app with it (a WebSocket route behind it is guarded the same
way) and answers CORS for the origins allowed. No Ray, no FastAPI.

- A request that gives a header judged here (Authorization, X-API-Key, Host, Origin) twice is refused
  (400): no "the last one wins".
- Keys: when any is set, every path under /v1 asks for one as OpenAI's clients send it
  (`Authorization: Bearer KEY`; a WebSocket may send it otherwise too: `presented_key`) and answers
  401 `invalid_api_key` without it. /health, /docs and
  the app (`--ui`, which asks for a key on its own login page) are open. Only the keys' SHA-256
  digests are kept.
- Host: a request must name one of `allowed_hosts` (None: any), so that a web page whose own name
  resolves to this machine (DNS rebinding) cannot reach a service on the loopback.
- Origin: a browser's request from a page of another origin is refused unless that origin is in
  `cors_origins` ("*": any), which then get CORS headers; none by default.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import json
from collections.abc import Iterable
from dataclasses import dataclass
from urllib.parse import parse_qs, urlsplit

from .openai_api import ApiError

LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")
KEYED_PREFIX = "/v1"  # the API: the paths that ask for a key when keys are set
CORS_MAX_AGE_S = 600
KEY_SUBPROTOCOL = "openai-insecure-api-key."  # a browser's WebSocket sends its key so (OpenAI's realtime clients)
JUDGED_HEADERS = (b"authorization", b"x-api-key", b"host", b"origin")  # given twice, a request is refused


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode("utf-8")).digest()


def hostname(host: str) -> str:
    """The name in a Host header, without its port and IPv6 brackets, lower case."""
    host = host.strip().lower()
    if host.startswith("["):
        return host[1 : host.find("]")] if "]" in host else host
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def is_wildcard(host: str) -> bool:
    return host in ("0.0.0.0", "::", "")


@dataclass(frozen=True)
class AccessPolicy:
    key_digests: tuple[bytes, ...] = ()
    allowed_hosts: tuple[str, ...] | None = None
    cors_origins: tuple[str, ...] = ()

    @classmethod
    def create(
        cls,
        bind_host: str,
        keys: Iterable[str] = (),
        allowed_hosts: Iterable[str] = (),
        cors_origins: Iterable[str] = (),
    ) -> "AccessPolicy":
        """The policy of a service listening on `bind_host`: on a loopback or one given address, the
        Host must name it or the loopback, with `allowed_hosts` beside them; on every interface
        (0.0.0.0, ::), any Host unless `allowed_hosts` are given."""
        given = tuple(hostname(h) for h in allowed_hosts)
        if is_wildcard(bind_host):
            hosts = (*given, *LOOPBACK_NAMES) if given else None
        else:
            hosts = (hostname(bind_host), *LOOPBACK_NAMES, *given)
        return cls(
            key_digests=tuple(dict.fromkeys(_digest(k) for k in keys)),
            allowed_hosts=tuple(dict.fromkeys(hosts)) if hosts is not None else None,
            cors_origins=tuple(dict.fromkeys(o.strip().rstrip("/").lower() for o in cors_origins)),
        )

    @property
    def keyed(self) -> bool:
        return bool(self.key_digests)

    def key_accepted(self, key: str | None) -> bool:
        if not self.key_digests:
            return True
        digest = _digest(key or "")
        return key is not None and any(hmac.compare_digest(digest, d) for d in self.key_digests)

    def cors_allows(self, origin: str) -> bool:
        return "*" in self.cors_origins or origin.rstrip("/").lower() in self.cors_origins

    def refusal(self, scope: dict) -> ApiError | None:
        """Why the request or WebSocket handshake in `scope` is refused (None: it is not)."""
        headers = _headers(scope)
        names = [name.lower() for name, _ in scope.get("headers", [])]
        twice = next((name.decode("latin-1") for name in JUDGED_HEADERS if names.count(name) > 1), None)
        if twice is not None:  # which one to believe is the question a smuggled request raises: neither
            return ApiError(
                400, f"the request has {names.count(twice.encode())} {twice} headers: send one", code="invalid_request"
            )
        host = headers.get("host", "")
        if self.allowed_hosts is not None and hostname(host) not in self.allowed_hosts:
            return ApiError(
                403,
                f"this service does not answer to the host {hostname(host) or '(none)'!r}; it answers "
                f"to {', '.join(self.allowed_hosts)} (--allowed-host adds a name)",
                code="host_not_allowed",
            )
        origin = headers.get("origin")
        if origin is not None and not (_same_origin(origin, host) or self.cors_allows(origin)):
            return ApiError(
                403,
                f"requests from pages of {origin} are not allowed here (--cors-origin allows an origin)",
                code="origin_not_allowed",
            )
        if (
            self.keyed
            and scope["path"].startswith(KEYED_PREFIX)
            and not _preflight(scope, headers)
            and not self.key_accepted(presented_key(scope, headers))
        ):
            return ApiError(
                401, "a valid API key is needed: send it as 'Authorization: Bearer KEY'", code="invalid_api_key"
            )
        return None


def offered_protocols(headers) -> list[str]:
    """The WebSocket subprotocols a client offers (Sec-WebSocket-Protocol, comma separated)."""
    return [p.strip() for p in headers.get("sec-websocket-protocol", "").split(",")]


def presented_key(scope: dict, headers: dict[str, str]) -> str | None:
    """The key a request sends: its Bearer token. A WebSocket (the realtime endpoint), which a browser
    cannot give headers, may also send it as speaches takes it, in an `X-API-Key` header or the
    `api_key` query parameter, or as OpenAI's browser clients do, as the subprotocol
    `openai-insecure-api-key.KEY`."""
    scheme, _, token = headers.get("authorization", "").partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        return token.strip()
    if scope["type"] == "websocket":
        if headers.get("x-api-key", "").strip():
            return headers["x-api-key"].strip()
        keys = [p.removeprefix(KEY_SUBPROTOCOL) for p in offered_protocols(headers) if p.startswith(KEY_SUBPROTOCOL)]
        values = keys or parse_qs(scope.get("query_string", b"").decode("latin-1")).get("api_key")
        return values[0] if values else None
    return None


def _headers(scope: dict) -> dict[str, str]:
    return {name.decode("latin-1").lower(): value.decode("latin-1") for name, value in scope.get("headers", [])}


def _same_origin(origin: str, host: str) -> bool:
    return urlsplit(origin).netloc.lower() == host.strip().lower() != ""


def _preflight(scope: dict, headers: dict[str, str]) -> bool:
    return scope["type"] == "http" and scope["method"] == "OPTIONS" and "access-control-request-method" in headers


def guard(app, policy: AccessPolicy):
    """`app` behind `policy`: refused requests get OpenAI's error shape (a WebSocket handshake is
    closed with 1008, which the server answers 403); a CORS preflight from an allowed origin is
    answered here; the answers to an allowed cross-origin request carry its CORS headers."""

    async def guarded(scope, receive, send):
        if scope["type"] not in ("http", "websocket"):
            return await app(scope, receive, send)
        refusal = policy.refusal(scope)
        if refusal is not None:
            if scope["type"] == "websocket":
                return await send({"type": "websocket.close", "code": 1008, "reason": refusal.message[:120]})
            extra = [(b"www-authenticate", b"Bearer")] if refusal.status == 401 else []
            return await _send_json(send, refusal.status, refusal.body(), extra)
        headers = _headers(scope)
        origin = headers.get("origin")
        if scope["type"] != "http" or origin is None or _same_origin(origin, headers.get("host", "")):
            return await app(scope, receive, send)
        cors = [(b"access-control-allow-origin", origin.encode("latin-1")), (b"vary", b"Origin")]
        if _preflight(scope, headers):
            return await _send_empty(
                send,
                204,
                cors
                + [
                    (b"access-control-allow-methods", b"GET, POST, OPTIONS"),
                    (
                        b"access-control-allow-headers",
                        headers.get("access-control-request-headers", "authorization, content-type").encode("latin-1"),
                    ),
                    (b"access-control-max-age", str(CORS_MAX_AGE_S).encode()),
                ],
            )

        async def with_cors(message):
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), *cors]}
            await send(message)

        return await app(scope, receive, with_cors)

    return guarded


async def _send_json(send, status: int, body: dict, headers: list[tuple[bytes, bytes]]) -> None:
    content = json.dumps(body).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(content)).encode()),
                *headers,
            ],
        }
    )
    await send({"type": "http.response.body", "body": content})


async def _send_empty(send, status: int, headers: list[tuple[bytes, bytes]]) -> None:
    await send({"type": "http.response.start", "status": status, "headers": [(b"content-length", b"0"), *headers]})
    await send({"type": "http.response.body", "body": b""})
