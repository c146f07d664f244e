"""HTTP-agnostic request and response: what the triggers hand to the core and get back."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Mapping
from urllib.parse import unquote, urlsplit

import orjson

# How long the client waits for the response, in seconds, as the OpenAI SDKs (Stainless-built)
# send it: Python's `x-stainless-read-timeout` (httpx's read time-out: the response's first byte,
# for a body this service sends only when done), Node's `x-stainless-timeout`.
CLIENT_TIMEOUT_HEADERS = ("x-stainless-read-timeout", "x-stainless-timeout")


@dataclass
class ApiRequest:
    method: str
    path: str
    headers: Mapping[str, str]          # any case; normalised to lower-case keys on creation
    query: Mapping[str, str] = field(default_factory=dict)
    body: bytes = b""
    route_params: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.headers = {k.lower(): v for k, v in self.headers.items()}

    @classmethod
    def from_url(cls, method: str, url: str, headers: Mapping[str, str],
                 query: Mapping[str, str], body: bytes,
                 route_params: Mapping[str, str] | None = None) -> "ApiRequest":
        """A request whose path is taken from the full URL the host reports."""
        try:
            path = unquote(urlsplit(url).path) or "/"
        except ValueError:
            path = "/"
        return cls(method, path, headers, query, body, route_params or {})

    def client_timeout_s(self) -> float | None:
        """Seconds the client says it waits for the response (:data:`CLIENT_TIMEOUT_HEADERS`),
        or None: absent, not a number, not finite, or not above 0 (Node sends whole seconds, so
        0 for a time-out under one)."""
        for name in CLIENT_TIMEOUT_HEADERS:
            raw = self.headers.get(name)
            if raw is None:
                continue
            try:
                value = float(raw.strip()[:32])
            except ValueError:
                return None
            return value if math.isfinite(value) and value > 0 else None
        return None


@dataclass
class ApiResponse:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return orjson.loads(self.body)
