"""A local host for machines without Azure Functions Core Tools.

It serves the functions registered in ``function_app.py`` over real HTTP, the way the Functions
host does (under host.json's ``routePrefix``, empty in this app): each request is routed by the
functions' route templates and methods (tools/route_templates.py: the most specific route wins),
turned into a ``func.HttpRequest`` (method, url, headers, params, route_params, body) and handed
to the registered Python function in a bounded thread pool, as the Functions Python worker runs
sync functions; the ``func.HttpResponse`` it returns is written back. It has no validation or
auth of its own beyond HTTP itself.

The HTTP layer is uvicorn with its h11 protocol, hardened for a server that anyone on the network
may reach:

- malformed requests (a bad ``Content-Length``, both ``Content-Length`` and chunked, a bad chunk,
  an unknown ``Transfer-Encoding``, oversized headers...) get a JSON 4xx/501, never a dropped
  connection; so do unknown routes (404), bodies over the cap (413) and time-outs (408);
- a request's line and headers must arrive within ``LOCAL_HOST_HEADER_TIMEOUT_SECONDS`` (of the
  connection's opening, or of their first byte on a kept-alive connection), its body within
  ``LOCAL_HOST_BODY_TIMEOUT_SECONDS`` of the headers; a connection idle between requests is
  closed after ``LOCAL_HOST_KEEP_ALIVE_SECONDS``;
- the body cap (``LOCAL_HOST_MAX_BODY_BYTES``) is enforced while the body streams in: a
  ``Content-Length`` over it is refused before anything is read, a chunked body as soon as it
  passes it. Its default is just above the app's largest body limit, so the app answers its own
  413s and nothing much larger is ever buffered; the bodies held at once (being read, or read
  and waiting for their function's answer) are bounded by ``LOCAL_HOST_MAX_BODIES_BYTES``
  (default 4 x the body cap): past it a body gets a JSON 503 with ``Retry-After: 1``;
- a ``Host`` header that is not a host and port, or a ``#`` in the request target, is a 400 (the
  Host becomes the function's ``req.url``, whose path the app reads);
- the listen backlog is ``LOCAL_HOST_BACKLOG`` (a burst of connections is queued, not reset);
- Ctrl-C or SIGTERM: requests still running after uvicorn's 5 s grace period get a JSON 503
  (``Retry-After: 1``) and the process exits (0), without waiting for their functions to return;
- after an answer sent before the request body was read (413, 408, 404), the connection is
  closed gracefully: the rest of the body is drained for a few seconds so that the client reads
  the answer instead of a reset.

    python -m tools.local_host --host 127.0.0.1 --port 7071      # --port 0: any free port

``make serve`` adds ``--hint``: under the "Serving" line, how to call it with the key it was
given (the secret itself only for the Makefile's development key).
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import http
import inspect
import ipaddress
import json
import logging
import math
import os
import re
import signal
import socket
import sys
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence
from urllib.parse import parse_qsl

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

from tools.route_templates import RouteTemplateError, Router, split_path

log = logging.getLogger("local_host")

MiB = 1024 * 1024
# The Functions host's maxRequestBodySize (FUNCTIONS_REQUEST_BODY_SIZE_LIMIT overrides it).
FUNCTIONS_MAX_BODY = 104857600
# The app's body limits and their defaults (embedding_core/settings.py).
APP_BODY_LIMITS = {"EMBEDDINGS_MAX_BODY_BYTES": 8 * MiB,
                   "EMBEDDINGS_MAX_IMAGE_BODY_BYTES": 32 * MiB}
BODY_CAP_MARGIN = 1 * MiB  # over the app's largest limit, so the app answers its own 413s
# The longest drain of an unread body after an early answer; then the socket closes.
LINGER_SECONDS = 5.0
SERVER_NAME = "embeddings-local-host"


def _env_number(env: Mapping[str, str], name: str, default: float, *, minimum: float,
                integer: bool = False) -> Any:
    raw = env.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        value = int(raw) if integer else float(raw)
    except ValueError:
        kind = "an integer" if integer else "a number"
        raise SystemExit(f"{name}={raw!r}: expected {kind}") from None
    if not math.isfinite(value):   # float() reads "nan" and "inf": a nan time-out fires at once
        raise SystemExit(f"{name}={raw!r}: must be a finite number")
    if value < minimum:
        raise SystemExit(f"{name}={raw!r}: must be at least {minimum}")
    return value


def default_max_body_bytes(env: Mapping[str, str]) -> int:
    """Just above the app's largest route limit (its own settings, read the same way), and never
    above what the Functions host itself accepts."""
    app = 0
    for name, default in APP_BODY_LIMITS.items():
        try:
            app = max(app, int(env.get(name) or default))
        except ValueError:  # the app reports its own bad settings (500 until fixed)
            app = max(app, default)
    try:
        functions = int(env.get("FUNCTIONS_REQUEST_BODY_SIZE_LIMIT") or FUNCTIONS_MAX_BODY)
    except ValueError:
        functions = FUNCTIONS_MAX_BODY
    return min(app + BODY_CAP_MARGIN, functions)


@dataclass(frozen=True)
class Limits:
    max_body_bytes: int
    # Bodies held at once: those being read, and those read whose function has not answered yet.
    # 0: 4 x max_body_bytes. Past it a body is refused (503, retryable): without it, clients that
    # stall one byte short of their bodies made the host hold ~35 MB each (review h_sec1 L2).
    max_bodies_bytes: int = 0
    max_header_bytes: int = 32 * 1024  # request line + headers (Kestrel's default is 32 KB too)
    header_timeout: float = 10.0
    body_timeout: float = 30.0
    keep_alive: float = 130.0  # Kestrel's KeepAliveTimeout, which the Functions host keeps
    backlog: int = 2048
    threads: int = 64

    @classmethod
    def from_env(cls, env: Mapping[str, str] = os.environ) -> "Limits":
        n = _env_number
        max_body = n(env, "LOCAL_HOST_MAX_BODY_BYTES", default_max_body_bytes(env), minimum=0,
                     integer=True)
        # Below the body cap, a body the cap allows would be refused every time, with a 503
        # that tells its client to retry.
        bodies = n(env, "LOCAL_HOST_MAX_BODIES_BYTES", 0, minimum=0, integer=True)
        if 0 < bodies < max_body:
            raise SystemExit(f"LOCAL_HOST_MAX_BODIES_BYTES={bodies}: must be at least "
                             f"LOCAL_HOST_MAX_BODY_BYTES ({max_body}), or 0 for 4 x that")
        return cls(
            max_body_bytes=max_body,
            max_bodies_bytes=bodies,
            max_header_bytes=n(env, "LOCAL_HOST_MAX_HEADER_BYTES", cls.max_header_bytes,
                               minimum=1024, integer=True),
            header_timeout=n(env, "LOCAL_HOST_HEADER_TIMEOUT_SECONDS", cls.header_timeout,
                             minimum=0.01),
            body_timeout=n(env, "LOCAL_HOST_BODY_TIMEOUT_SECONDS", cls.body_timeout, minimum=0.01),
            keep_alive=n(env, "LOCAL_HOST_KEEP_ALIVE_SECONDS", cls.keep_alive, minimum=0.01),
            backlog=n(env, "LOCAL_HOST_BACKLOG", cls.backlog, minimum=1, integer=True),
            # The Functions Python worker's own setting for its sync thread pool.
            threads=n(env, "PYTHON_THREADPOOL_THREAD_COUNT", cls.threads, minimum=1, integer=True),
        )

    @property
    def bodies_budget(self) -> int:
        return self.max_bodies_bytes or 4 * self.max_body_bytes


# -- the host's own answers: JSON, in the app's error shape ---------------------------------------

ERROR_CODES = {400: "BadRequest", 404: "NotFound", 408: "RequestTimeout", 413: "PayloadTooLarge",
               431: "RequestHeaderFieldsTooLarge", 500: "InternalServerError",
               501: "NotImplemented"}


def error_code(status: int) -> str:
    if status in ERROR_CODES:
        return ERROR_CODES[status]
    try:
        return "".join(w.capitalize() for w in re.split(r"[\s-]+", http.HTTPStatus(status).phrase))
    except ValueError:
        return "Error"


Headers = list[tuple[bytes, bytes]]


def error_response(status: int, message: str, *, close: bool = False,
                   retry_after: int | None = None) -> tuple[Headers, bytes]:
    code = error_code(status)
    body = json.dumps({"error": {"code": code, "message": message}}).encode()
    headers = [(b"content-type", b"application/json"), (b"x-ms-error-code", code.encode()),
               (b"content-length", str(len(body)).encode())]
    if retry_after is not None:
        headers.append((b"retry-after", str(retry_after).encode()))
    if close:
        headers.append((b"connection", b"close"))
    return headers, body


def _reason(status: int) -> bytes:
    try:
        return http.HTTPStatus(status).phrase.encode()
    except ValueError:
        return b""


# -- HTTP: uvicorn's h11 protocol with time-outs, JSON errors and graceful closes ------------------

class _Connection(h11.Connection):
    """h11's connection, remembering the last protocol error (its status hint: 400, 431, 501)."""

    last_error: h11.RemoteProtocolError | None = None

    def next_event(self):  # type: ignore[override]
        try:
            return super().next_event()
        except h11.RemoteProtocolError as exc:
            self.last_error = exc
            raise


class _GracefulTransport:
    """The connection's transport, except that closing it while the client may still be sending
    (an answer given before the body was read, or to a malformed or timed-out request) sends the
    answer and EOF, then drains what still arrives for up to LINGER_SECONDS before closing: closing
    a socket with unread data resets it, and the client would see ECONNRESET instead of the answer.
    Otherwise the socket closes once the answer is flushed, and is aborted if a client that stops
    reading has not taken it within the body time-out."""

    def __init__(self, transport: asyncio.Transport, protocol: "HostProtocol"):
        self._transport = transport
        self._protocol = protocol
        self._closing = False

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)

    def is_closing(self) -> bool:
        return self._closing or self._transport.is_closing()

    def close(self) -> None:
        t = self._transport
        if self._closing or t.is_closing():
            self._closing = True
            t.close()
            return
        self._closing = True
        loop = self._protocol.loop
        if self._protocol.peer_may_still_send() and t.can_write_eof():
            self._protocol.draining = True
            t.resume_reading()
            t.write_eof()  # after the buffered answer
            loop.call_later(LINGER_SECONDS, t.abort)  # a no-op once the connection is gone
        else:
            t.close()
            if t.get_write_buffer_size():
                loop.call_later(self._protocol.limits.body_timeout, t.abort)


class HostProtocol(H11Protocol):
    """uvicorn's h11 protocol with the local host's limits (set on the subclass by make_protocol).

    uvicorn closes a connection that stays idle for the keep-alive time after a response, but a
    client that trickles a request head in byte by byte, or connects and sends nothing, is never
    timed out, and its protocol errors are text/plain 400s without the status h11 suggests (431,
    501). This subclass adds the head time-out (from the connection's start, or from the first
    byte of a later request on a kept-alive connection) and answers those errors in JSON."""

    limits: Limits

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.conn = _Connection(h11.SERVER, self.limits.max_header_bytes)
        self.draining = False
        self._head_timer: asyncio.TimerHandle | None = None

    # connection life cycle
    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(_GracefulTransport(transport, self))  # type: ignore[arg-type]
        # A new connection must send its first request head within the header time-out.
        self._head_timer = self.loop.call_later(self.limits.header_timeout, self._head_timed_out)

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_head_timer()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self.draining:
            return  # the answer is sent; what the client still sends is discarded
        try:
            super().data_received(data)
        except Exception:  # noqa: BLE001 - never drop a connection without an answer
            log.exception("unexpected error while parsing a request")
            self.send_error(400, "The request could not be parsed.")
            return
        self._watch_head()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._watch_head()

    def peer_may_still_send(self) -> bool:
        state = self.conn.their_state
        if state in (h11.SEND_BODY, h11.ERROR):
            return True
        return state is h11.IDLE and bool(self.conn.trailing_data[0])

    # the request-head time-out
    def _watch_head(self) -> None:
        if self.transport.is_closing():
            self._cancel_head_timer()
        elif self.conn.their_state is h11.IDLE:
            if self._head_timer is None and self.conn.trailing_data[0]:
                # Part of a request head has arrived: the rest must follow within the time-out.
                self._unset_keepalive_if_required()
                self._head_timer = self.loop.call_later(self.limits.header_timeout,
                                                        self._head_timed_out)
        else:
            self._cancel_head_timer()

    def _cancel_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if self.transport.is_closing() or self.conn.their_state is not h11.IDLE:
            return
        if not self.conn.trailing_data[0]:  # nothing sent at all: close, as an idle connection
            self.timeout_keep_alive_handler()
            return
        log.info("%s: request head not complete after %s s: 408",
                 _peer(self.client), self.limits.header_timeout)
        self.send_error(408, f"The request line and headers did not arrive within "
                             f"{self.limits.header_timeout:g} seconds.")

    # the host's own error answers
    def send_400_response(self, msg: str) -> None:  # called by uvicorn on h11.RemoteProtocolError
        exc = self.conn.last_error
        status = getattr(exc, "error_status_hint", 400) or 400
        # h11's message, without the bytes it quotes: nothing the client sent is echoed
        detail = re.sub(r":?\s*(bytearray|b)\(?b?['\"].*$", "", str(exc or msg)).strip()[:160]
        detail = detail or "invalid"
        log.info("%s: malformed request (%s): %s", _peer(self.client), status, detail)
        if status == 431:
            message = f"The request line and headers exceed {self.limits.max_header_bytes} bytes."
        elif status == 501:
            message = f"Not implemented: {detail}."
        else:
            message = f"Malformed HTTP request: {detail}."
        self.send_error(status, message)

    def send_error(self, status: int, message: str) -> None:
        """Answer ``status`` in JSON and close (gracefully), unless a response is under way."""
        if self.transport.is_closing():
            return
        cycle = self.cycle
        if cycle is not None and cycle.response_started and not cycle.response_complete:
            self.transport.close()  # too late for another status line
            return
        headers, body = error_response(status, message, close=True)
        head = [b"HTTP/1.1 %d %s\r\n" % (status, _reason(status))]
        for name, value in [*self.server_state.default_headers, *headers]:
            head.append(name + b": " + value + b"\r\n")
        self.transport.write(b"".join(head) + b"\r\n" + body)
        if cycle is not None and not cycle.response_complete:
            # The app is waiting for the body: it gets http.disconnect, and can no longer answer.
            cycle.disconnected = True
            cycle.message_event.set()
        self.transport.close()


class _ClientErrorsAreNotWarnings(logging.Filter):
    """uvicorn logs a WARNING for every malformed request and unsupported upgrade: the client's
    error, which the host answers (and logs at INFO), not the server's. A client must not be able
    to fill the log (or a pipe nobody reads) with them."""

    MESSAGES = ("Invalid HTTP request received.", "Unsupported upgrade request.",
                "No supported WebSocket library detected.")

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.levelno == logging.WARNING and str(record.msg).startswith(self.MESSAGES))


def make_protocol(limits: Limits) -> type[HostProtocol]:
    return type("LocalHostProtocol", (HostProtocol,), {"limits": limits})


def _peer(client: tuple[str, int] | None) -> str:
    return "%s:%d" % client if client else "-"


# -- the Functions side: routes -> func.HttpRequest -> user function -> func.HttpResponse --------

def route_prefix(app_dir: Path) -> str:
    """host.json's ``extensions.http.routePrefix``; ``api`` if it is not set, as in Azure."""
    path = app_dir / "host.json"
    try:
        doc = json.loads(path.read_text(encoding="utf-8-sig"))
    except FileNotFoundError:
        return "api"
    except (OSError, ValueError) as exc:
        raise SystemExit(f"{path}: {exc}") from None
    http_options = (doc.get("extensions") or {}).get("http") or {}
    return str(http_options.get("routePrefix", "api")).strip("/")


def load_routes(app: Any, prefix: str = "", notes: list[str] | None = None) -> Router:
    """A Router over a FunctionApp's HTTP-triggered functions (route template, methods), each
    route under ``prefix`` (host.json's routePrefix). What was mapped is appended to ``notes``
    (logged after the "Serving" line, which must be the first line of output)."""
    router = Router()
    notes = [] if notes is None else notes
    for fn in app.get_functions():
        trigger = fn.get_trigger()
        if trigger is None or trigger.get_binding_name() != "httpTrigger":
            notes.append(f"function {fn.get_function_name()} has no HTTP trigger: not served")
            continue
        route = getattr(trigger, "route", None) or fn.get_function_name()
        if prefix:
            route = f"{prefix}/{route.lstrip('/')}"
        methods = [getattr(m, "value", str(m)).upper() for m in (trigger.methods or [])] or None
        try:
            router.add(route, methods, fn.get_user_function())
        except RouteTemplateError as exc:
            raise SystemExit(f"function {fn.get_function_name()}: route {route!r}: {exc}") from None
        notes.append(f"mapped {route} [{','.join(methods or ['all'])}] to {fn.get_function_name()}")
    return router


_TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
# RFC 9110 7.2 Host: uri-host [ ":" port ], uri-host a reg-name, IPv4 or [IP-literal].
_HOST = re.compile(rb"(?:[A-Za-z0-9\-._~!$&'()*+,;=%]+|\[[0-9A-Fa-f:.]+\])(?::[0-9]*)?")
_BAD_VALUE = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f-\xff]")
_NO_BODY_STATUSES = (204, 304)
_HOP_BY_HOP = (b"content-length", b"transfer-encoding", b"connection", b"keep-alive", b"upgrade")


class InvalidResponse(Exception):
    """A function's response that cannot be sent as HTTP (the Functions host answers 500 too)."""


def response_parts(res: Any) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
    """Status, headers and body of a function's return value, as the Python worker encodes it:
    ``content-type`` from the mimetype if the headers have none; a header repeated keeps its last
    value, except ``Set-Cookie``."""
    import azure.functions as func

    if isinstance(res, str):
        res = func.HttpResponse(res)
    if not isinstance(res, func.HttpResponse):
        raise InvalidResponse(f"returned {type(res).__name__}, not func.HttpResponse")
    status = int(res.status_code)
    if not 200 <= status <= 599:
        raise InvalidResponse(f"status code {status} is not a final HTTP status")
    merged: dict[bytes, tuple[bytes, bytes]] = {}
    cookies: list[tuple[bytes, bytes]] = []
    for name, value in res.headers.items():
        try:
            n = str(name).encode("ascii")
            v = str(value).strip(" \t").encode("ascii")
        except UnicodeEncodeError:
            raise InvalidResponse(f"header {str(name)[:60]!r} is not ASCII") from None
        if not _TOKEN.fullmatch(n) or _BAD_VALUE.search(v):
            raise InvalidResponse(f"header {str(name)[:60]!r} has a character HTTP does not allow")
        if n.lower() in _HOP_BY_HOP:
            continue
        if n.lower() == b"set-cookie":
            cookies.append((n, v))
        else:
            merged[n.lower()] = (n, v)
    if b"content-type" not in merged:
        ct = res.mimetype
        if ct.startswith("text/"):
            ct = f"{ct}; charset={res.charset}"
        merged[b"content-type"] = (b"Content-Type", ct.encode("ascii", "replace"))
    body = res.get_body() or b""
    if status in _NO_BODY_STATUSES:
        body = b""
    headers = list(merged.values()) + cookies
    if status not in _NO_BODY_STATUSES:
        headers.append((b"content-length", str(len(body)).encode()))
    return status, headers, body


class FunctionsHost:
    """The ASGI application: route, read the body under its cap and deadline, call the function."""

    def __init__(self, router: Router, limits: Limits,
                 executor: concurrent.futures.Executor | None = None):
        self.router = router
        self.limits = limits
        self.executor = executor or concurrent.futures.ThreadPoolExecutor(
            max_workers=limits.threads, thread_name_prefix="function")
        self._lock = threading.Lock()
        self.running = 0            # sync functions running on the executor now
        self.bodies_bytes = 0       # body bytes held now (Limits.max_bodies_bytes; event loop only)

    def _run(self, fn: Any, req: Any) -> Any:
        with self._lock:
            self.running += 1
        try:
            return fn(req)
        finally:
            with self._lock:
                self.running -= 1

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        started = False

        async def tracked_send(message: dict) -> None:
            nonlocal started
            started = True
            await send(message)

        try:
            await self._handle(scope, receive, tracked_send)
        except asyncio.CancelledError:
            # The server is stopping (Ctrl-C) and its grace period is over: say so in JSON,
            # instead of uvicorn's text/plain 500; the function may still be running.
            if not started:
                await self._answer(send, 503, *error_response(
                    503, "The local host is shutting down.", close=True, retry_after=1))
                # Answered: the request is over, an expected part of stopping, not uvicorn's
                # "Exception in ASGI application" traceback for each (review h_ops1 8).
                return
            raise
        except Exception:  # noqa: BLE001 - a bug here must still give a JSON answer
            log.exception("the local host failed on %s %s", scope.get("method"),
                          scope.get("path", "")[:200])
            if not started:
                await self._answer(send, 500, *error_response(
                    500, "The local host failed; its log has the cause.", close=True))

    async def _handle(self, scope: dict, receive: Any, send: Any) -> None:
        method: str = scope["method"]
        raw_path: str = scope["raw_path"].decode("latin-1")
        headers: list[tuple[bytes, bytes]] = scope["headers"]
        length = next((int(v) for k, v in headers if k == b"content-length"), None)
        chunked = any(k == b"transfer-encoding" for k, _ in headers)
        expects_body = chunked or bool(length)
        # h11 enforces the header limit on a head that arrives in pieces; this, on one that
        # arrived at once.
        head_size = len(method) + len(scope["raw_path"]) + len(scope["query_string"]) + \
            sum(len(k) + len(v) + 4 for k, v in headers)
        if head_size > self.limits.max_header_bytes:
            await self._answer(send, 431, *error_response(
                431, f"The request line and headers exceed {self.limits.max_header_bytes} bytes.",
                close=True))
            return
        if chunked and length is not None:  # RFC 9112 6.3: a smuggling attempt; refuse and close
            await self._answer(send, 400, *error_response(
                400, "Malformed HTTP request: both Transfer-Encoding and Content-Length.",
                close=True))
            return

        host = next((v for k, v in headers if k == b"host"), b"")
        if host and not _HOST.fullmatch(host):  # it becomes the function's req.url (Kestrel: 400)
            await self._answer(send, 400, *error_response(
                400, "Malformed HTTP request: invalid Host header.", close=True))
            return
        if "#" in raw_path:             # a fragment is never part of a request target
            await self._answer(send, 400, *error_response(
                400, "Malformed HTTP request: '#' in the request target.", close=True))
            return
        if raw_path.startswith(("http://", "https://")):  # absolute-form request target
            raw_path = "/" + raw_path.split("://", 1)[1].partition("/")[2]
        try:
            match = self.router.match(method, split_path(raw_path))
        except ValueError:
            await self._answer(send, 400, *error_response(
                400, "The request target must be a path starting with '/'.", close=True))
            return
        if match is None:
            await self._answer(send, 404, *error_response(
                404, f"No function serves {method} {raw_path[:200]}.", close=expects_body))
            return
        if length is not None and length > self.limits.max_body_bytes:
            await self._answer(send, 413, *error_response(413, self._too_large(), close=True))
            return
        if length and self.bodies_bytes + length > self.limits.bodies_budget:
            await self._answer(send, 503, *self._too_many_bodies())
            return

        body = await self._read_body(receive, send, expects_body)
        if body is None:
            return  # answered already, or the client is gone
        try:
            await self._call(scope, method, raw_path, headers, match, body, send)
        finally:
            self.bodies_bytes -= len(body)

    def _too_many_bodies(self) -> tuple[Headers, bytes]:
        log.info("request bodies held would pass %d bytes: 503", self.limits.bodies_budget)
        return error_response(
            503, "This body would take the request bodies the local host holds at once past "
                 f"{self.limits.bodies_budget} bytes (LOCAL_HOST_MAX_BODIES_BYTES); retry in a "
                 "moment.", close=True, retry_after=1)

    async def _call(self, scope: dict, method: str, raw_path: str,
                    headers: list[tuple[bytes, bytes]], match: Any, body: bytes,
                    send: Any) -> None:
        import azure.functions as func

        query = scope["query_string"].decode("latin-1")
        host = next((v.decode("latin-1") for k, v in headers if k == b"host"), None) \
            or "%s:%d" % tuple(scope["server"] or ("localhost", 80))
        # A repeated header or query parameter reaches the worker once, its values joined with
        # "," (the Functions host sends ASP.NET's StringValues.ToString()).
        joined: dict[str, str] = {}
        for k, v in headers:
            name, value = k.decode("latin-1"), v.decode("latin-1")
            joined[name] = f"{joined[name]},{value}" if name in joined else value
        params: dict[str, str] = {}
        for name, value in parse_qsl(query, keep_blank_values=True):
            params[name] = f"{params[name]},{value}" if name in params else value
        req = func.HttpRequest(
            method=method,
            url=f"{scope['scheme']}://{host}{raw_path}" + (f"?{query}" if query else ""),
            headers=joined,
            params=params,
            route_params=match.values,
            body=body,
        )
        fn = match.target
        try:
            if inspect.iscoroutinefunction(fn):
                res = await fn(req)
            else:
                res = await asyncio.get_running_loop().run_in_executor(self.executor, self._run,
                                                                       fn, req)
            status, out_headers, out_body = response_parts(res)
        except Exception as exc:  # noqa: BLE001 - a 500, never a dropped connection
            name = getattr(fn, "__name__", "function")
            if isinstance(exc, InvalidResponse):
                log.error("function %s: invalid response: %s", name, exc)
            else:
                log.exception("function %s raised", name)
            await self._answer(send, 500, *error_response(
                500, f"The function {name} failed; the host's log has the cause."))
            return
        # One line per call, as `func start` prints its "Executed 'Functions.…'" lines (the app
        # logs its own at DEBUG: on Azure the worker forwards its records to the host's export).
        log.info("%s %s -> %d (%s)", method, raw_path[:200], status,
                 getattr(fn, "__name__", "function"))
        await self._answer(send, status, out_headers, out_body)

    def _too_large(self) -> str:
        return (f"The request body is larger than the local host's limit of "
                f"{self.limits.max_body_bytes} bytes (LOCAL_HOST_MAX_BODY_BYTES). The routes' own "
                f"limits: EMBEDDINGS_MAX_BODY_BYTES for text, EMBEDDINGS_MAX_IMAGE_BODY_BYTES for "
                f"images.")

    async def _read_body(self, receive: Any, send: Any, expects_body: bool) -> bytes | None:
        """The whole body, or None after answering 413/408 (or if the client went away)."""
        if not expects_body:
            return b""
        chunks: list[bytes] = []
        size = 0
        done = False
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout_at(loop.time() + self.limits.body_timeout):
                while True:
                    message = await receive()
                    if message["type"] == "http.disconnect":
                        return None
                    chunk = message.get("body", b"")
                    size += len(chunk)
                    self.bodies_bytes += len(chunk)
                    if size > self.limits.max_body_bytes:
                        await self._answer(send, 413, *error_response(
                            413, self._too_large(), close=True))
                        return None
                    if self.bodies_bytes > self.limits.bodies_budget:
                        await self._answer(send, 503, *self._too_many_bodies())
                        return None
                    if chunk:
                        chunks.append(chunk)
                    if not message.get("more_body", False):
                        done = True     # held until the function has answered (_handle)
                        return b"".join(chunks)
        except TimeoutError:
            log.info("request body not complete after %s s: 408", self.limits.body_timeout)
            await self._answer(send, 408, *error_response(
                408, f"The request body did not arrive within {self.limits.body_timeout:g} "
                     "seconds.", close=True))
            return None
        finally:
            if not done:
                self.bodies_bytes -= size

    @staticmethod
    async def _answer(send: Any, status: int, headers: Headers, body: bytes) -> None:
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body, "more_body": False})


# -- serving ---------------------------------------------------------------------------------------

def listen(host: str, port: int, backlog: int) -> socket.socket:
    """The listening socket, ready before the "Serving" line is printed: connections made as
    soon as it is read wait in the backlog instead of being refused."""
    info = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    family, socktype, proto, _, address = info[0]
    sock = socket.socket(family, socktype, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if family == socket.AF_INET6:
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    sock.bind(address)
    sock.listen(backlog)
    sock.setblocking(False)
    return sock


def build_server(app: Any, limits: Limits, prefix: str = "", notes: list[str] | None = None):
    import uvicorn

    uvicorn_log = logging.getLogger("uvicorn.error")
    if not any(isinstance(f, _ClientErrorsAreNotWarnings) for f in uvicorn_log.filters):
        uvicorn_log.addFilter(_ClientErrorsAreNotWarnings())

    config = uvicorn.Config(
        FunctionsHost(load_routes(app, prefix, notes), limits),
        http=make_protocol(limits),
        loop="asyncio",
        lifespan="off",
        ws="none",
        interface="asgi3",
        log_config=None,
        access_log=False,
        server_header=False,
        headers=[("server", SERVER_NAME)],
        timeout_keep_alive=limits.keep_alive,  # type: ignore[arg-type]
        backlog=limits.backlog,
        h11_max_incomplete_event_size=limits.max_header_bytes,
        timeout_graceful_shutdown=5,
    )
    class Server(uvicorn.Server):
        def handle_exit(self, sig: int, frame: Any) -> None:
            # SIGTERM (docker stop, systemd, kill) stops the host as Ctrl-C does. uvicorn raises
            # the signal again once it has stopped, before the requests cancelled after the
            # grace period have answered: SIGTERM's default action then killed the process, and
            # those clients got a dropped connection instead of the JSON 503.
            super().handle_exit(signal.SIGINT if sig == signal.SIGTERM else sig, frame)

    return Server(config)


LOCAL_DEV_KEY = "local-dev-key-0000"    # the Makefile's EMBEDDINGS_API_KEYS by default


def hint(env: Mapping[str, str], host: str, port: int) -> list[str]:
    """``make serve``'s lines under "Serving": a curl to try, with the key to send, after what
    the app will refuse in its settings (an invalid setting or replacement registry: every
    request answers 500; a key entry it does not accept), which it would otherwise say only at
    the first request. A key set by the user is not printed (a ``name:key`` entry's key is the
    part after the ':'; the app's messages about entries never hold a key)."""
    from embedding_core.settings import Settings, hosted_on_azure, parse_api_keys

    try:
        settings = Settings.from_env(env)
        if env.get("EMBEDDINGS_ENTRA_TENANT_ID", "").strip():
            from embedding_core.entra import EntraConfig

            EntraConfig.from_env(env)
        if settings.registry_path:        # a replacement registry, read as the service reads it
            from embedding_core.registry import Registry, RegistryError

            try:
                Registry.from_settings(settings)
            except RegistryError as exc:
                raise ValueError(f"EMBEDDINGS_REGISTRY: {exc}") from None
    except ValueError as exc:
        return [f"Configuration error: {str(exc).rstrip('.')}. Every request answers 500 until "
                "it is fixed."]
    # As the app reads them: where it refuses the development key, it is not offered here.
    keys, problems = parse_api_keys(env.get("EMBEDDINGS_API_KEYS", ""), hosted=hosted_on_azure(env))
    if env.get("EMBEDDINGS_AUTH", "").strip().lower() == "disabled":
        problems = ()                    # no key is asked for
    return [f"Not accepted: {problem.removeprefix('configuration error: ')}"
            for problem in problems] + _try_lines(env, host, port, keys, bool(problems))


def _try_lines(env: Mapping[str, str], host: str, port: int, keys: Sequence[Any],
               refused: bool) -> list[str]:
    disabled = env.get("EMBEDDINGS_AUTH", "").strip().lower() == "disabled"
    try:
        ip = ipaddress.ip_address(host)
        loopback = ip.is_loopback or bool(getattr(ip, "ipv4_mapped", None)
                                           and ip.ipv4_mapped.is_loopback)
    except ValueError:
        loopback = host.lower() == "localhost"
    # Where curl reaches it: every interface (0.0.0.0, ::) includes loopback; IPv6 in brackets.
    reach = url_host({"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(host, host))
    curl = (f"curl -s 'http://{reach}:{port}/embeddings?api-version=2024-05-01-preview'"
            "{} -H 'Content-Type: application/json' -d '{{\"input\": [\"hello world\"]}}'")
    exposed = [] if loopback else [
        f"Warning: listening on {host}, beyond this machine, with " + (
            "authentication disabled: anyone who reaches this address can call it. Remove "
            "EMBEDDINGS_AUTH=disabled." if disabled else
            "the development key, which the README publishes: anyone who reaches this address "
            "can call it. Set your own key (EMBEDDINGS_API_KEYS).")]
    if disabled:
        return ["Authentication is disabled (EMBEDDINGS_AUTH=disabled).",
                "Try: " + curl.format(""), *exposed]
    if [k.secret for k in keys] == [LOCAL_DEV_KEY]:
        return [f"Local development API key: {LOCAL_DEV_KEY}",
                "Try: " + curl.format(f" -H 'api-key: {LOCAL_DEV_KEY}'"), *exposed]
    if keys:
        callers = ", ".join(dict.fromkeys(k.caller_id for k in keys))
        dev = [] if LOCAL_DEV_KEY not in [k.secret for k in keys] else exposed
        return [f"EMBEDDINGS_API_KEYS: keys accepted for {callers} (not printed here).",
                "Try, with KEY one of them (of a name:key entry, the part after the first "
                "':'): " + curl.format(' -H "api-key: $KEY"'), *dev]
    if env.get("EMBEDDINGS_ENTRA_TENANT_ID", "").strip():
        return ["No API key is accepted: send an Entra ID token (Authorization: Bearer)."]
    return ["No key of EMBEDDINGS_API_KEYS is accepted (" + ("above: why" if refused else
                                                             "none is set")
            + "): every request gets 401."]


def url_host(host: str) -> str:
    """``host`` as a URL writes it: an IPv6 address in brackets."""
    return f"[{host}]" if ":" in host else host


LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


def log_level(env: Mapping[str, str]) -> str:
    """``LOG_LEVEL`` (default INFO), any case; an unknown name stops the host, saying so."""
    level = (env.get("LOG_LEVEL") or "INFO").strip().upper()
    if level not in LOG_LEVELS:
        raise SystemExit(f"LOG_LEVEL={env.get('LOG_LEVEL')!r}: expected one of "
                         + ", ".join(LOG_LEVELS))
    return level


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default=os.environ.get("HOST", "127.0.0.1"))
    parser.add_argument("--port", type=int, default=int(os.environ.get("PORT", "7071")))
    parser.add_argument("--app-dir", type=Path, default=Path(__file__).resolve().parent.parent)
    parser.add_argument("--hint", action="store_true",
                        help="print how to call it with the key set (make serve)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=log_level(os.environ),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    limits = Limits.from_env()
    sys.path.insert(0, str(args.app_dir))
    import function_app

    try:
        sock = listen(args.host, args.port, limits.backlog)
    except OSError as exc:
        raise SystemExit(f"cannot listen on {args.host}:{args.port}: {exc}") from None
    notes: list[str] = []
    server = build_server(function_app.app, limits, route_prefix(args.app_dir), notes)
    port = sock.getsockname()[1]
    print(f"Serving function_app on http://{url_host(args.host)}:{port}", flush=True)
    if args.hint:
        print("\n".join(hint(os.environ, args.host, port)), flush=True)
    for note in notes:
        log.debug("%s", note)
    log.info("limits: body %d bytes, bodies held %d bytes, headers %d bytes, header time-out %g s, "
             "body time-out %g s, keep-alive %g s, backlog %d, %d worker threads",
             limits.max_body_bytes, limits.bodies_budget, limits.max_header_bytes,
             limits.header_timeout, limits.body_timeout, limits.keep_alive, limits.backlog,
             limits.threads)
    try:
        server.run(sockets=[sock])
    except KeyboardInterrupt:
        pass
    host: FunctionsHost = server.config.app
    host.executor.shutdown(wait=False, cancel_futures=True)
    running = host.running
    if running:
        # A function still running after the grace period would hold the process open until
        # it returns (the pool's threads are joined at exit), and a second Ctrl-C could not
        # stop it: exit now, as stopping `func start` stops its worker.
        log.warning("exiting with %d function(s) still running", running)
        logging.shutdown()
        os._exit(0)


if __name__ == "__main__":
    main()
