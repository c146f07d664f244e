"""HTTP-agnostic request and response: what the triggers hand to the core and get back."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any, Mapping
from urllib.parse import urlsplit

import orjson

from .entry import decode_path

# How long the client waits for the response, as the OpenAI SDKs (Stainless-built) send it, and
# what to add to the value: Python's `x-stainless-read-timeout` on every request (httpx's read
# time-out: the response's first byte, for a body this service sends only when done), Node's
# `x-stainless-timeout` when a request sets its own time-out, in whole seconds rounded down (1.9 s
# is sent as 1: such a client waits less than the value + 1).
CLIENT_TIMEOUT_HEADERS = (("x-stainless-read-timeout", 0.0), ("x-stainless-timeout", 1.0))
_SECONDS = re.compile(r"[0-9]{1,12}(?:\.[0-9]{0,12})?(?:[eE][-+]?[0-9]{1,3})?")


@dataclass
class ApiRequest:
    method: str
    path: str
    headers: Mapping[str, str]          # any case; normalised to lower-case keys on creation
    query: Mapping[str, str] = field(default_factory=dict)
    body: bytes = b""
    route_params: Mapping[str, str] = field(default_factory=dict)
    # The platform's trace context for this invocation, (traceparent, tracestate): under the
    # Functions host, its request span. None: none given.
    invocation_trace: tuple[str, str] | None = None

    def __post_init__(self) -> None:
        self.headers = {k.lower(): v for k, v in self.headers.items()}

    @classmethod
    def from_url(cls, method: str, url: str, headers: Mapping[str, str],
                 query: Mapping[str, str], body: bytes,
                 route_params: Mapping[str, str] | None = None,
                 invocation: Any = None) -> "ApiRequest":
        """A request whose path is taken from the full URL the host reports. ``invocation``: the
        Functions worker's invocation context (``azure.functions.Context``), whose
        ``trace_context`` is the host's request span."""
        try:
            path = decode_path(urlsplit(url).path) or "/"
        except ValueError:
            path = "/"
        trace_context = getattr(invocation, "trace_context", None)
        parent = getattr(trace_context, "trace_parent", None)
        state = getattr(trace_context, "trace_state", None)
        invocation_trace = ((parent, state if isinstance(state, str) else "")
                            if isinstance(parent, str) and parent else None)
        return cls(method, path, headers, query, body, route_params or {}, invocation_trace)

    def client_timeout_s(self) -> float | None:
        """Seconds the client waits for the response at most (:data:`CLIENT_TIMEOUT_HEADERS`),
        or None: absent, or not a plain non-negative number (an ASCII decimal, as the SDKs
        write it), or not above 0 once the header's rounding is allowed for."""
        for name, add in CLIENT_TIMEOUT_HEADERS:
            raw = self.headers.get(name)
            if raw is None:
                continue
            raw = raw.strip()
            if not _SECONDS.fullmatch(raw):
                return None
            value = float(raw) + add
            return value if math.isfinite(value) and value > 0 else None
        return None


@dataclass
class ApiResponse:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return orjson.loads(self.body)
