"""The served OpenAPI document (placeholder)."""

from __future__ import annotations

from typing import Any


def document(registry: Any) -> dict[str, Any]:
    return {"openapi": "3.1.0", "info": {"title": "Embeddings API", "version": "1"}, "paths": {}}
