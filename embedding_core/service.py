"""Handlers: one function per route, from an HTTP-agnostic request to an HTTP-agnostic response.

This is where the pieces meet: auth, headers, the wire schema, deployment selection, the
concurrency bound, the backend, output sizes and encodings. Every ``ApiError`` is mapped to its
status and Azure error body in exactly one place (:meth:`EmbeddingService._run`); any other
exception becomes a 500 that names only the request id.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

import orjson

from . import errors, memory, schema
from .auth import Authenticator
from .batching import ConcurrencyLimiter
from .encodings import CALIBRATED, PACKED, encode, resize
from .registry import Deployment, Registry
from .settings import Settings

log = logging.getLogger("embedding_core")

JSON_OPTS = orjson.OPT_SERIALIZE_NUMPY
ROUTE_MODALITY = {"/embeddings": "text", "/images/embeddings": "image"}


@dataclass
class ApiRequest:
    method: str
    path: str
    headers: Mapping[str, str]          # any case; normalised to lower-case keys on creation
    query: Mapping[str, str] = field(default_factory=dict)
    body: bytes = b""

    def __post_init__(self) -> None:
        self.headers = {k.lower(): v for k, v in self.headers.items()}


@dataclass
class ApiResponse:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return orjson.loads(self.body)


class EmbeddingService:
    def __init__(self, settings: Settings, registry: Registry | None = None,
                 authenticator: Authenticator | None = None):
        self.settings = settings
        self.registry = registry or Registry.from_settings(settings)
        self.auth = authenticator or Authenticator(settings)
        self.limiter = ConcurrencyLimiter(settings.max_concurrency, settings.max_queue,
                                          settings.queue_timeout_s, settings.retry_after_s)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> "EmbeddingService":
        return cls(Settings.from_env(env))

    # -- routes ---------------------------------------------------------------------------------
    def embeddings(self, req: ApiRequest) -> ApiResponse:
        return self._run(req, lambda timing: self._embed(req, "/embeddings", timing))

    def image_embeddings(self, req: ApiRequest) -> ApiResponse:
        return self._run(req, lambda timing: self._embed(req, "/images/embeddings", timing))

    def info(self, req: ApiRequest) -> ApiResponse:
        def handle(timing: dict[str, float]) -> dict[str, Any]:
            self.auth.check(req.headers)
            schema.check_api_version(req.query)
            dep = self._select_any(req.query.get("model"),
                                   schema.model_deployment_header(req.headers), "text")
            return {"model_name": dep.model_name, "model_type": dep.model_type,
                    "model_provider_name": dep.provider}
        return self._run(req, handle)

    def health(self, req: ApiRequest) -> ApiResponse:
        def handle(timing: dict[str, float]) -> dict[str, Any]:
            return {"status": "ok", "deployments": [
                {"name": d.name, "modality": d.modality, "dimensions": d.dimensions,
                 "loaded": self.registry.is_loaded(d)} for d in self.registry.deployments]}
        return self._run(req, handle)

    # -- the embeddings pipeline ----------------------------------------------------------------
    def _embed(self, req: ApiRequest, route: str, timing: dict[str, float]) -> dict[str, Any]:
        s = self.settings
        modality = ROUTE_MODALITY[route]
        self.auth.check(req.headers)
        schema.check_api_version(req.query)
        extra_mode = schema.extra_parameters_mode(req.headers)
        header_model = schema.model_deployment_header(req.headers)
        schema.check_content_type(req.headers)
        limit = s.max_text_body_bytes if modality == "text" else s.max_image_body_bytes
        doc = schema.parse_body(req.body, limit)
        body = schema.parse_request(
            doc, modality=modality, extra_mode=extra_mode,
            max_items=s.max_inputs if modality == "text" else s.max_image_inputs)
        dep = self.registry.select(modality, route, body.model, header_model)

        dims = body.dimensions or dep.dimensions
        if dims not in dep.supported_dimensions:
            raise errors.validation(
                f"Deployment '{dep.name}' does not support dimensions={dims}; supported: "
                + ", ".join(map(str, dep.supported_dimensions)) + ".", "dimensions")
        if body.encoding_format in PACKED and dims % 8:
            raise errors.validation(
                f"encoding_format '{body.encoding_format}' needs dimensions divisible by 8 "
                f"(got {dims}).", "encoding_format")
        ranges = None
        if body.encoding_format in CALIBRATED:
            calibration = self.registry.calibration(dep)
            ranges = calibration.get(dims) if calibration else None
            if ranges is None:
                raise errors.validation(
                    f"Deployment '{dep.name}' has no {body.encoding_format} calibration for "
                    f"{dims} dimensions.", "encoding_format")

        backend = self.registry.backend(dep)
        extras = backend.check_extras(body.extras)
        with self.limiter.slot() as waited:
            timing["queue"] = waited
            t0 = time.perf_counter()
            result = backend.encode(body.inputs, input_type=body.input_type, extras=extras)
            timing["inference"] = time.perf_counter() - t0
        vectors = resize(result.vectors, dims)
        values = encode(vectors, body.encoding_format, ranges)
        return {
            "id": timing["request_id"], "object": "list", "model": dep.model_name,
            "data": [{"index": i, "object": "embedding", "embedding": v}
                     for i, v in enumerate(values)],
            "usage": {"prompt_tokens": result.prompt_tokens, "total_tokens": result.prompt_tokens},
        }

    def _select_any(self, model: str | None, header: str | None, default_modality: str) -> Deployment:
        """Deployment for /info: any modality when named, else the route's default."""
        if model is None and header is None:
            return self.registry.select(default_modality, "/info", None, None)
        dep = self.registry.find(model or header or "")
        modality = dep.modality if dep else default_modality
        return self.registry.select(modality, "/info", model, header)

    # -- error mapping, ids, timing: the one place ----------------------------------------------
    def _run(self, req: ApiRequest, handler: Callable[[dict[str, Any]], dict[str, Any]]) -> ApiResponse:
        return run_request(req, handler)


def run_request(req: ApiRequest, handler: Callable[[dict[str, Any]], dict[str, Any]]) -> ApiResponse:
    """Run ``handler`` for ``req``: ids, timing headers, and every error mapped to its status."""
    start = time.perf_counter()
    request_id = uuid.uuid4().hex
    timing: dict[str, Any] = {"request_id": request_id}
    headers = {"Content-Type": "application/json", "x-request-id": request_id}
    client_id = req.headers.get("x-ms-client-request-id")
    if client_id:
        headers["x-ms-client-request-id"] = client_id[:256]
    try:
        payload = handler(timing)
        status = 200
    except errors.ApiError as exc:
        status, payload = exc.status, exc.body()
        headers.update(exc.response_headers())
    except Exception:  # noqa: BLE001
        log.exception("request %s failed", request_id)
        exc = errors.internal(request_id)
        status, payload = exc.status, exc.body()
        headers.update(exc.response_headers())
    body = orjson.dumps(payload, option=JSON_OPTS)
    total = time.perf_counter() - start
    headers["x-total-time"] = f"{total * 1000:.1f}"
    if "queue" in timing:
        headers["x-queue-time"] = f"{timing['queue'] * 1000:.1f}"
    if "inference" in timing:
        headers["x-inference-time"] = f"{timing['inference'] * 1000:.1f}"
    log.info("%s %s -> %d in %.1f ms (request %s)", req.method, req.path, status,
             total * 1000, request_id)
    return ApiResponse(status, headers, body)


_service: EmbeddingService | None = None
_service_lock = threading.Lock()


def get_service() -> EmbeddingService:
    """The process-wide service, built on first request from the environment."""
    global _service
    if _service is None:
        with _service_lock:
            if _service is None:
                _service = EmbeddingService.from_env()
                # hardening/memory: glibc arenas, mmap threshold, idle trim (once per process).
                s = _service.settings
                memory.configure(s.memory_tuning, s.malloc_arena_max, s.memory_trim_idle_s,
                                 s.malloc_mmap_threshold)
    return _service


ROUTES = {"embeddings": "embeddings", "images/embeddings": "image_embeddings",
          "info": "info", "health": "health"}


def dispatch(route: str, req: ApiRequest) -> ApiResponse:
    """Serve ``req`` on ``route`` (a key of :data:`ROUTES`) with the process-wide service."""
    try:
        service = get_service()
    except Exception:  # noqa: BLE001 - bad settings or registry: logged, 500 to the client
        log.exception("service configuration error")

        def fail(timing: dict[str, Any]) -> dict[str, Any]:
            raise errors.internal(timing["request_id"])
        return run_request(req, fail)
    with memory.request():   # hardening/memory: the idle trimmer counts requests in flight
        return getattr(service, ROUTES[route])(req)


def reset_service() -> None:
    """Forget the process-wide service (tests change the environment between cases)."""
    global _service
    with _service_lock:
        _service = None
