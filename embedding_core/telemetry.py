"""Telemetry of requests and the inference queue (placeholder: the log line only, for now)."""

from __future__ import annotations

from typing import Any


def record(trace: Any, *, method: str, status: int, error_code: str | None, start_ns: int,
           duration_s: float) -> None:
    """One finished request."""


def watch_queue(queue: Any) -> None:
    """Observe the inference queue's depth."""
