"""HTTP-agnostic request and response: what the triggers hand to the core and get back."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping
from urllib.parse import unquote, urlsplit

import orjson


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


@dataclass
class ApiResponse:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return orjson.loads(self.body)
