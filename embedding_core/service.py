"""Handlers: from an HTTP-agnostic request to an HTTP-agnostic response, per route.

Each route belongs to a wire dialect (``dialect_azure`` or ``dialect_openai``). A handler
authenticates, lets its dialect parse the body into the one request model, runs the one
pipeline (``pipeline.py``, which feeds the process's inference queue) and lets the dialect
render the result. Every ``ApiError`` is rendered by the route's dialect in exactly one place
(:func:`run_request`); any other exception becomes a 500 that names only the request id.
"""

from __future__ import annotations

import logging
import re
import threading
import time
import uuid
from dataclasses import dataclass
from typing import Any, Callable, Mapping

import orjson

from . import build, dialect_azure, dialect_openai, errors, memory, telemetry
from . import settings as settings_module
from .api import ApiRequest, ApiResponse
from .auth import Authenticator
from .inference_queue import InferenceFailed, InferenceQueue, default_rates
from .pipeline import Pipeline, Trace
from .registry import Deployment, Registry
from .settings import SUPPORTED_API_VERSIONS, Settings

log = logging.getLogger("embedding_core")

JSON_OPTS = orjson.OPT_SERIALIZE_NUMPY
# A request is admitted only if the queue, at its measured rate, can finish it within this share
# of EMBEDDINGS_REQUEST_TIMEOUT_SECONDS (the rest is margin for estimates and slow batches).
QUEUE_WAIT_SHARE = 0.75
DIALECTS = {dialect_azure.NAME: dialect_azure, dialect_openai.NAME: dialect_openai}

__all__ = ["ApiRequest", "ApiResponse", "EmbeddingService", "ROUTES", "dispatch",
           "get_service", "reset_service", "run_request"]


@dataclass(frozen=True)
class Route:
    """A Functions route template, the methods it serves, its dialect and its handler.

    A GET route also serves HEAD (RFC 9110 §9.3.2; Azure Front Door's health probes use it by
    default): the same handler, status, headers and body; the HTTP server drops the body
    (Kestrel under the Functions host; uvicorn in the local host, which keeps Content-Length)."""

    template: str
    methods: tuple[str, ...]
    dialect: str
    handler: str
    auth: bool = True


GET = ("GET", "HEAD")
ROUTES = {r.template: r for r in (
    Route("embeddings", ("POST",), "azure", "azure_embeddings"),
    Route("images/embeddings", ("POST",), "azure", "azure_image_embeddings"),
    Route("info", GET, "azure", "azure_info"),
    Route("health", GET, "azure", "health_status", auth=False),
    Route("v1/embeddings", ("POST",), "openai", "openai_embeddings"),
    Route("v1/models", GET, "openai", "openai_models"),
    Route("v1/models/{model}", GET, "openai", "openai_model"),
    Route("openai/deployments/{deployment}/embeddings", ("POST",), "openai",
          "azure_openai_embeddings"),
    # Azure OpenAI's v1 API (its GA data plane since 2025): OpenAI(base_url=".../openai/v1/"),
    # litellm's azure/ with api_version "v1", "latest" or "preview". The /v1 routes' handlers.
    Route("openai/v1/embeddings", ("POST",), "openai", "openai_embeddings"),
    Route("openai/v1/models", GET, "openai", "openai_models"),
    Route("openai/v1/models/{model}", GET, "openai", "openai_model"),
    Route("swagger.json", GET, "azure", "openapi", auth=False),
    Route("openapi.json", GET, "azure", "openapi", auth=False),
)}
CATCH_ALL = "{*path}"


def _segments(path: str) -> list[str]:
    return [s for s in path.strip("/").split("/") if s]


def _hint_404(segments: list[str]) -> str:
    """What a 404 adds for the paths clients reach by a known mistake ("" for others)."""
    parts = [s.lower() for s in segments]
    if len(parts) > 1 and parts[0] == "models" and match_route("/".join(parts[1:])) is not None:
        return (" This service's endpoint is the base URL without /models (the suffix of an "
                "Azure AI Foundry endpoint).")
    if parts in (["v1", "images", "embeddings"], ["openai", "v1", "images", "embeddings"]):
        return (f" Images go to POST /images/embeddings?api-version={SUPPORTED_API_VERSIONS[0]} "
                "(OpenAI's API has no image embeddings).")
    return ""


def match_route(path: str) -> Route | None:
    """The route whose template matches ``path`` (``{name}`` matches one segment)."""
    parts = [p.lower() for p in _segments(path)]
    for route in ROUTES.values():
        tpl = _segments(route.template)
        if len(tpl) == len(parts) and all(t.startswith("{") or t == p for t, p in zip(tpl, parts)):
            return route
    return None


def path_dialect(path: str) -> str:
    """The dialect an unknown path is answered in: OpenAI's under /v1 and /openai."""
    first = (_segments(path) or [""])[0].lower()
    return dialect_openai.NAME if first in ("v1", "openai") else dialect_azure.NAME


class EmbeddingService:
    def __init__(self, settings: Settings, registry: Registry | None = None,
                 authenticator: Authenticator | None = None,
                 queue: InferenceQueue | None = None):
        self.settings = settings
        self.registry = registry or Registry.from_settings(settings)
        self.auth = authenticator or Authenticator(settings)
        self.queue = queue or InferenceQueue(
            {"tokens": settings.max_queue_tokens, "images": settings.max_queue_images},
            max_wait_s=QUEUE_WAIT_SHARE * settings.request_timeout_s,
            workers=settings.workers, cores=settings_module.usable_cores())
        self.pipeline = Pipeline(settings, self.registry, self.queue)
        self._openapi: dict[str, Any] | None = None
        assumed = default_rates(self.queue.workers)["tokens"]
        largest_s = settings.max_request_tokens / assumed
        if largest_s > settings.request_timeout_s:
            # Under the cap, such a request is refused (422) only once the rate is measured, or
            # after it ran until its time-out (inference_queue.TOO_SLOW_MARGIN).
            log.warning("EMBEDDINGS_MAX_REQUEST_TOKENS=%d may not finish within "
                        "EMBEDDINGS_REQUEST_TIMEOUT_SECONDS=%g on a slow CPU (%.0f s at %.0f "
                        "tokens/s): the largest requests would be refused (422), some only after "
                        "running until the time-out; lower the cap or raise the time-out",
                        settings.max_request_tokens,
                        settings.request_timeout_s, largest_s, assumed)
        longest = max((d.max_tokens or 0 for d in self.registry.deployments), default=0)
        if settings.max_request_tokens < longest:
            log.warning("EMBEDDINGS_MAX_REQUEST_TOKENS=%d is below the %d tokens one input may "
                        "have: longer inputs are refused (422) even alone, truncated or not",
                        settings.max_request_tokens, longest)
        telemetry.watch_queue(self.queue)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> "EmbeddingService":
        return cls(Settings.from_env(env))

    # -- serving --------------------------------------------------------------------------------
    def handle(self, template: str, req: ApiRequest) -> ApiResponse:
        """Serve ``req`` on the route registered as ``template`` (or the catch-all)."""
        route = ROUTES.get(template)
        if route is None:
            return run_request(req, path_dialect(req.path), "unmatched",
                               lambda trace: self.unmatched(req))
        handler = getattr(self, route.handler)

        def run(trace: Trace) -> dict[str, Any]:
            if route.auth:
                trace.caller = self.auth.check(req.headers).id
            return handler(req, trace)
        return run_request(req, route.dialect, route.template, run)

    # The public names tests and scripts use (one per Azure route).
    def embeddings(self, req: ApiRequest) -> ApiResponse:
        return self.handle("embeddings", req)

    def image_embeddings(self, req: ApiRequest) -> ApiResponse:
        return self.handle("images/embeddings", req)

    def info(self, req: ApiRequest) -> ApiResponse:
        return self.handle("info", req)

    def health(self, req: ApiRequest) -> ApiResponse:
        return self.handle("health", req)

    # -- handlers: (request, trace) -> payload ---------------------------------------------------
    def azure_embeddings(self, req: ApiRequest, trace: Trace) -> dict[str, Any]:
        request = dialect_azure.parse_embeddings(req, "text", self.settings)
        return dialect_azure.render_embeddings(
            self.pipeline.embed(request, "/embeddings", trace), trace.request_id)

    def azure_image_embeddings(self, req: ApiRequest, trace: Trace) -> dict[str, Any]:
        request = dialect_azure.parse_embeddings(req, "image", self.settings)
        return dialect_azure.render_embeddings(
            self.pipeline.embed(request, "/images/embeddings", trace), trace.request_id)

    def azure_info(self, req: ApiRequest, trace: Trace) -> dict[str, Any]:
        model, header = dialect_azure.parse_info(req)
        dep = self._select_any(model, header, "text")
        trace.deployment = dep.name
        return dialect_azure.render_info(dep)

    def health_status(self, req: ApiRequest, trace: Trace) -> dict[str, Any]:
        if not self.auth.disabled and not self.auth.configured:
            # Every call would be a 401 (an unresolved Key Vault reference, keys all refused, or
            # none set): not healthy, so a probe or the post-deployment smoke test says so.
            raise errors.ApiError(
                503, "ServiceUnavailable",
                "Every request is refused: the server has no usable credentials "
                "(EMBEDDINGS_API_KEYS or the EMBEDDINGS_ENTRA_* settings" + (
                    "; the README's development key is not accepted on Azure"
                    if self.auth.development_key_refused else "") + "); the server log says "
                "why.", headers={"Retry-After": "60"})   # settings are read once per process
        stats = self.queue.stats()
        failed = [d.name for d in self.registry.deployments if self.registry.load_failed(d)]
        # "degraded": some calls fail for the server's reasons, which a probe matching
        # "status":"ok" sees (the log says why). Loads are tried by requests, never here.
        problems = [f"deployment {name} failed to load" for name in failed]
        if self.auth.keys_unusable and not self.auth.disabled:
            problems.append("no key of EMBEDDINGS_API_KEYS is usable (Entra ID tokens are)" + (
                "; the README's development key is not accepted on Azure"
                if self.auth.development_key_refused else ""))
        elif self.auth.development_key_refused and not self.auth.disabled:
            problems.append("an EMBEDDINGS_API_KEYS entry is the README's development key, "
                            "refused on Azure (the other keys work)")
        entra = self.auth.entra
        if entra is not None and not self.auth.disabled and getattr(entra, "keys_unavailable",
                                                                    False):
            problems.append("Entra ID tokens cannot be checked: the signing keys could not be "
                            "fetched (each token gets a 503; the log says from where)")
        body: dict[str, Any] = {"status": "degraded" if problems else "ok"}
        if problems:
            body["problems"] = problems
        if self.auth.disabled:
            # Nothing fails (status stays "ok"), but never silently: the post-deployment check
            # refuses it unless told the app is reachable only through what authenticates.
            body["authentication"] = "disabled"
        body["build"] = build.current()      # which code answers (scripts/smoke_deployed.py)
        body["deployments"] = [
            {"name": d.name, "modality": d.modality, "dimensions": d.dimensions,
             "loaded": self.registry.is_loaded(d), "failed": d.name in failed}
            for d in self.registry.deployments]
        body["queue"] = {"requests": stats.jobs, "queued_tokens": stats.queued.get("tokens", 0),
                         "queued_images": stats.queued.get("images", 0),
                         "preparing_tokens": stats.preparing.get("tokens", 0),
                         "preparing_images": stats.preparing.get("images", 0),
                         "tokens_per_second": (round(stats.rates["tokens"])
                                               if "tokens" in stats.measured else None)}
        return body

    def openai_embeddings(self, req: ApiRequest, trace: Trace) -> dict[str, Any]:
        request = dialect_openai.parse_embeddings(req, self.settings)
        return dialect_openai.render_embeddings(
            self.pipeline.embed(request, trace.route, trace), trace.request_id)   # the path used

    def azure_openai_embeddings(self, req: ApiRequest, trace: Trace) -> dict[str, Any]:
        deployment = req.route_params.get("deployment") or _segments(req.path)[2]
        deployment = re.sub("%2[fF]", "/", deployment)   # as for /v1/models/{model} (below)
        request = dialect_openai.parse_embeddings(req, self.settings, deployment=deployment)
        return dialect_openai.render_embeddings(
            self.pipeline.embed(request, "/openai/deployments/{deployment}/embeddings", trace),
            trace.request_id)

    def openai_models(self, req: ApiRequest, trace: Trace) -> dict[str, Any]:
        return dialect_openai.render_models(self.registry.deployments)

    def openai_model(self, req: ApiRequest, trace: Trace) -> dict[str, Any]:
        """OpenAI's ``GET /v1/models/{model}``: a text deployment, by name or alias."""
        name = req.route_params.get("model") or _segments(req.path)[-1]
        # A route value keeps an encoded '/' (%2F) encoded, the one escape the host does not
        # decode; the openai SDK sends models.retrieve("sentence-transformers/all-MiniLM-L6-v2")
        # so. (An unencoded '/' makes more segments than the route has: the catch-all's 404.)
        name = re.sub("%2[fF]", "/", name)
        dep = self.registry.find(name)
        if dep is None or dep.modality != "text":
            serving = [d for d in self.registry.deployments if d.modality == "text"]
            text = [d.name for d in serving]
            err = errors.model_not_found(name, text,
                                         tuple(n for d in serving for n in (d.name, *d.aliases)))
            if dep is not None:   # OpenAI's models are text models: 404, saying why
                err.message = (f"Deployment '{dep.name}' embeds {dep.modality}s, and the OpenAI "
                               "route serves text deployments only: "
                               + (", ".join(text) if text else "none is configured") + ".")
            raise err
        return dialect_openai.render_model(dep)

    def openapi(self, req: ApiRequest, trace: Trace) -> dict[str, Any]:
        """The OpenAPI document, built on first request from this service's settings and
        registry, then the same object for the life of the process (no model is loaded)."""
        if self._openapi is None:
            from .openapi import document
            self._openapi = document(self.settings, self.registry)
        return self._openapi

    def unmatched(self, req: ApiRequest) -> dict[str, Any]:
        """The catch-all route: 405 for a known path with another method, else 404."""
        route = match_route(req.path)
        shown = errors.clip(req.path, 120)
        # A path that names a route only loosely (``//embeddings``: the host routes it here) is
        # no route: a 405 would list the very method it was sent with.
        if route is not None and req.method.upper() not in route.methods:
            raise errors.ApiError(
                405, "MethodNotAllowed",
                f"Method {errors.clip(req.method, 16)} is not allowed on {shown}; allowed: "
                + ", ".join(route.methods) + ".", headers={"Allow": ", ".join(route.methods)})
        segments = _segments(req.path)
        if len(segments) > 4 and [x.lower() for x in segments[:2]] == ["openai", "deployments"] \
                and segments[-1].lower() == "embeddings":
            # AzureOpenAI(...).embeddings.create(model="sentence-transformers/all-MiniLM-L6-v2")
            # puts the name's '/' in the path as it is.
            name = errors.clip("/".join(segments[2:-1]), 120)
            raise errors.ApiError(
                404, "NotFound",
                f"No route {shown}: the deployment in /openai/deployments/{{deployment}}/embeddings "
                f"is one path segment, and '{name}' has a '/'. Encode it as %2F, or name the "
                "deployment without it (GET /v1/models lists the names).")
        raise errors.ApiError(404, "NotFound", f"No route {shown}.{_hint_404(segments)} Routes: "
                              + ", ".join(f"{'|'.join(r.methods)} /{r.template}"
                                          for r in ROUTES.values()) + ".")

    def _select_any(self, model: str | None, header: str | None, default_modality: str) -> Deployment:
        """Deployment for /info: any modality when named, else the route's default."""
        if model is None and header is None:
            return self.registry.select(default_modality, "/info", None, None)
        dep = self.registry.find(model or header or "")
        modality = dep.modality if dep else default_modality
        return self.registry.select(modality, "/info", model, header, any_modality=True)


def run_request(req: ApiRequest, dialect: str, route: str,
                handler: Callable[[Trace], Any]) -> ApiResponse:
    """Run ``handler``: ids, timing headers, telemetry, and every error rendered by ``dialect``."""
    start = time.perf_counter()
    start_ns = time.time_ns()
    trace = Trace(uuid.uuid4().hex, route="/" + route, dialect=dialect,
                  client_timeout_s=req.client_timeout_s())
    render_error = DIALECTS[dialect].render_error
    # nosniff and no-store: error bodies echo a clipped path or value, and answers are per caller
    # (a cache or CDN put in front must not keep one: review h_sec1 I3).
    headers = {"Content-Type": "application/json", "X-Content-Type-Options": "nosniff",
               "Cache-Control": "no-store", "x-request-id": trace.request_id}
    client_id = errors.safe_client_request_id(req.headers.get("x-ms-client-request-id"))
    if client_id:
        headers["x-ms-client-request-id"] = client_id
    # Where the worker attached no trace context, the invocation's: the request's logs and span
    # then belong to the host's request.
    token = telemetry.attach_invocation(req.invocation_trace)
    try:
        return _run(req, handler, trace, render_error, headers, start, start_ns)
    finally:
        telemetry.detach(token)


def _run(req: ApiRequest, handler: Callable[[Trace], Any], trace: Trace,
         render_error: Callable, headers: dict[str, str], start: float,
         start_ns: int) -> ApiResponse:
    error_code = None
    try:
        payload = handler(trace)
        status = 200
    except errors.ApiError as exc:
        status, extra, payload = render_error(exc)
        headers.update(extra)
        error_code = exc.code
    except Exception as failure:  # noqa: BLE001
        if isinstance(failure, InferenceFailed):
            # Its batch's failure is logged there, at most once a minute for each error.
            log.debug("request %s failed: its inference batch failed", trace.request_id)
        else:
            log.exception("request %s failed", trace.request_id)
        exc = errors.internal(trace.request_id)
        status, extra, payload = render_error(exc)
        headers.update(extra)
        error_code = exc.code
    body = orjson.dumps(payload, option=JSON_OPTS)
    total = time.perf_counter() - start
    headers["x-total-time"] = f"{total * 1000:.1f}"
    if trace.queue_s is not None:
        headers["x-queue-time"] = f"{trace.queue_s * 1000:.1f}"
    if trace.inference_s is not None:
        headers["x-inference-time"] = f"{trace.inference_s * 1000:.1f}"
    # DEBUG, and the route, not the path: the Functions worker forwards every record of the root
    # logger to the host unsanitised, which exports it (a billed row per call, 429s included,
    # and a path a client chose).
    log.debug("%s %s -> %d in %.1f ms (request %s)", errors.clip(req.method, 16), trace.route,
              status, total * 1000, trace.request_id)
    telemetry.record(trace, method=req.method, status=status, error_code=error_code,
                     start_ns=start_ns, duration_s=total, invocation_trace=req.invocation_trace)
    return ApiResponse(status, headers, body)


_service: EmbeddingService | None = None
_service_lock = threading.Lock()
_config_error: tuple[float, str] | None = None   # (when it was logged in full, its summary)
_config_error_lock = threading.Lock()   # concurrent failing requests: one logs it
CONFIG_ERROR_RELOG_SECONDS = 60.0


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


def dispatch(template: str, req: ApiRequest) -> ApiResponse:
    """Serve ``req`` on the route registered as ``template`` with the process-wide service."""
    global _config_error
    try:
        service = get_service()
    except Exception as exc:  # noqa: BLE001 - bad settings or registry: logged, 500 to the client
        # Settings and registry errors are ValueErrors; anything else (a thread that could not
        # start, memory) is not the configuration's fault, and the next request tries again.
        config = isinstance(exc, ValueError)
        now = time.monotonic()
        summary = f"{type(exc).__name__}: {exc}"
        with _config_error_lock:
            due = _config_error is None or _config_error[1] != summary or \
                now - _config_error[0] > CONFIG_ERROR_RELOG_SECONDS
            if due:
                _config_error = (now, summary)
        # A wrong setting or registry stays wrong until the deployment is fixed (not retried);
        # a registry file that could not be read (a share still mounting) may be read next time.
        lasting = config and not errors.chain_has(exc, OSError)
        if due:
            # Once a minute, not per request (a retrying client multiplied it). The exported
            # copy keeps only the template: it names what is wrong, never a value.
            # The traceback's last line has the message (values included): the local log only.
            # Under the request's trace context, as run_request's logs are (where the worker
            # attached none): the row then belongs to the host's failed request.
            token = telemetry.attach_invocation(req.invocation_trace)
            try:
                if config:
                    log.exception("service configuration error, " + _config_culprit(exc)
                                  + (" (answering 500 until it is fixed)" if lasting else
                                     " (answering 500; each request tries again)"))
                else:
                    log.exception("the service could not start, " + type(exc).__name__
                                  + " (answering 500; each request tries again)")
            finally:
                telemetry.detach(token)
        route = ROUTES.get(template)
        dialect = route.dialect if route else path_dialect(req.path)

        def fail(trace: Trace) -> dict[str, Any]:
            raise (errors.misconfigured(trace.request_id, lasting) if config
                   else errors.internal(trace.request_id))
        return run_request(req, dialect, template, fail)
    with memory.request():   # the idle memory trimmer counts requests in flight
        return service.handle(template, req)


_SETTING_NAME = re.compile(r"\b((?:EMBEDDINGS|AZURE|WEBSITE)_[A-Z0-9_]{2,60})\b")


def _config_culprit(exc: BaseException) -> str:
    """What a configuration error is about, from names this app defines (no values): safe to
    export in a log template."""
    from .registry import RegistryError

    names = list(dict.fromkeys(_SETTING_NAME.findall(str(exc))))
    if names:
        return "invalid setting " + ", ".join(names)
    if isinstance(exc, RegistryError):
        what = "unreadable" if errors.chain_has(exc, OSError) else "invalid"
        return what + " registry (EMBEDDINGS_REGISTRY or embedding_core/registry.json)"
    return type(exc).__name__


def reset_service() -> None:
    """Forget the process-wide service (tests change the environment between cases) and stop its
    inference workers, which would otherwise keep it, its models among it, for the process's life."""
    global _service, _config_error
    with _service_lock:
        if _service is not None:
            _service.queue.stop()
        _service = None
        _config_error = None
        settings_module.forget_warnings()
