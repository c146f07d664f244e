"""OpenTelemetry for requests and the inference queue: one span per request, usage metrics,
queue-depth gauges, and exported logs that are sanitised.

``service.run_request`` calls :func:`record` once per request; ``EmbeddingService`` calls
:func:`watch_queue`. Both cost next to nothing when telemetry is off, and importing this module
imports no OpenTelemetry code.

Where telemetry goes is decided once per process, at the first request, by
``EMBEDDINGS_TELEMETRY``:

- ``auto`` (default): use the OpenTelemetry SDK the process already has (on Azure the Functions
  Python worker configures the Azure Monitor distro when
  ``PYTHON_APPLICATIONINSIGHTS_ENABLE_TELEMETRY=true``, before the app is imported); else the
  Azure Monitor distro if ``APPLICATIONINSIGHTS_CONNECTION_STRING`` is set; else off. Locally
  nothing is exported.
- ``off``, ``console`` (stderr), ``otlp`` (the standard ``OTEL_EXPORTER_OTLP_*`` settings),
  ``azure`` (the distro, from ``APPLICATIONINSIGHTS_CONNECTION_STRING`` and
  ``APPLICATIONINSIGHTS_AUTHENTICATION_STRING``).

A request thread only queues its request (with its trace context and timestamps); the
``telemetry`` thread hands queued requests to the SDK in batches (:class:`_Worker`), and the SDK
exports on its own batch threads. So a failing, slow or blocked SDK or exporter never fails or
slows a request (telemetry is dropped instead), and an error inside :func:`record` is swallowed.
Console, OTLP and Azure exporters are set up on a background thread after the first request;
requests answered meanwhile are recorded once they are ready.

What is exported (the names are listed in docs/operations.md): routes, deployments, caller ids
(names such as ``key:3f2a9c1e``, never a secret), counts, sizes, durations, status codes and error
*codes*. Never exported: input text, images, vectors, keys, bearer tokens, request bodies, request
paths, error messages, exception messages. Logs reach an exporter only through
:class:`SanitizingHandler`: WARNING and above, the message template without its arguments, and
exceptions as their type and stack frames without the message.
"""

from __future__ import annotations

import atexit
import itertools
import logging
import os
import sys
import threading
import time
import traceback
import weakref
from collections import deque
from typing import Any

log = logging.getLogger(__name__)

ENV_MODE = "EMBEDDINGS_TELEMETRY"
ENV_LOG_LEVEL = "EMBEDDINGS_TELEMETRY_LOG_LEVEL"
MODES = ("auto", "off", "console", "otlp", "azure")
SCOPE = "embedding_core"        # tracer and meter name
# The package's logger: the only one whose records we export (infra/ sets
# PYTHON_APPLICATIONINSIGHTS_LOGGER_NAME to it, so the worker's distro hooks it and not the root).
EXPORTED_LOGGER = "embedding_core"
# The logger named to the Azure Monitor distro in ``azure`` mode: nothing logs to it (_build).
_DISTRO_LOGGER = "embeddings-api.azure-monitor-setup"
SERVICE_NAME = "embeddings-api"

# Seconds. OpenTelemetry's HTTP duration buckets, extended to the 230 s Azure HTTP limit.
DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5,
                    10.0, 30.0, 60.0, 120.0, 240.0)
HTTP_METHODS = frozenset(("GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE",
                          "PATCH"))

_lock = threading.Lock()
_OFF = object()
_recorder: Any = None   # None: undecided; _OFF; or _worker (whose target is set once ready)
_providers: list[Any] = []      # providers this module created (flushed by shutdown())
_handlers: list[tuple[logging.Logger, logging.Handler, logging.Handler | None]] = []
_queues: "weakref.WeakSet[Any]" = weakref.WeakSet()
_setup_thread: threading.Thread | None = None
_failures = 0


# -- the two calls the service makes --------------------------------------------------------------

def record(trace: Any, *, method: str, status: int, error_code: str | None, start_ns: int,
           duration_s: float, invocation_trace: tuple[str, str] | None = None) -> None:
    """One finished request (``trace`` is its ``pipeline.Trace``; ``invocation_trace``: the
    platform's (traceparent, tracestate) for it, the parent when the thread has none). Never
    raises.

    The request thread only queues the request with its trace context (a few µs); the telemetry
    thread records it."""
    rec = _recorder
    if rec is _OFF:
        return
    try:
        if rec is None:
            rec = _activate()
            if rec is _OFF:
                return
        rec.submit((trace, method, status, error_code, start_ns, duration_s,
                    invocation_trace))
    except Exception:  # noqa: BLE001 - telemetry must never fail a request
        _failed()


def attach_invocation(invocation_trace: tuple[str, str] | None) -> Any:
    """Make the platform's trace context for this request (``ApiRequest.invocation_trace``) the
    request thread's, where the Functions worker attached none, so that the request's exported
    logs (and its span) belong to the host's request. A token for :func:`detach`, or None when
    nothing was attached: no trace context, none usable, one already attached, or OpenTelemetry
    not loaded (before the first request's telemetry set-up the span still gets the parent, on
    the telemetry thread). Never raises."""
    context = sys.modules.get("opentelemetry.context")
    if invocation_trace is None or context is None:
        return None
    try:
        from opentelemetry import trace
        from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
        if trace.get_current_span().get_span_context().is_valid:
            return None
        ctx = TraceContextTextMapPropagator().extract({"traceparent": invocation_trace[0],
                                                       "tracestate": invocation_trace[1]})
        if not trace.get_current_span(ctx).get_span_context().is_valid:
            return None
        return context.attach(ctx)
    except Exception:  # noqa: BLE001 - telemetry must never fail a request
        _failed()
        return None


def detach(token: Any) -> None:
    """Undo :func:`attach_invocation` (in the same thread). Never raises."""
    if token is not None:
        try:
            sys.modules["opentelemetry.context"].detach(token)
        except Exception:  # noqa: BLE001
            _failed()


def watch_queue(queue: Any) -> None:
    """Report ``queue.stats()`` in the queue-depth gauges (every live queue of the process)."""
    _queues.add(queue)


# -- configuration --------------------------------------------------------------------------------

def mode() -> str:
    """The effective mode: ``off``, ``existing`` (an SDK the process already configured),
    ``console``, ``otlp`` or ``azure``."""
    raw = os.environ.get(ENV_MODE, "").strip().lower() or "auto"
    if raw not in MODES:
        log.warning("%s must be one of %s; telemetry is off", ENV_MODE, ", ".join(MODES))
        return "off"
    if raw in ("auto", "azure") and _sdk_installed():
        return "existing"     # never configure the distro twice (it would export everything twice)
    if raw == "auto":
        return "azure" if os.environ.get("APPLICATIONINSIGHTS_CONNECTION_STRING") else "off"
    return raw


def install(tracer_provider: Any, meter_provider: Any, logger_provider: Any = None) -> None:
    """Record with these providers from now on (tests, benchmarks, embedding applications).

    With ``logger_provider``, records of the ``embedding_core`` loggers are exported through it,
    sanitised. The providers are not made global."""
    global _recorder
    reset()
    rec = _Recorder(tracer_provider, meter_provider)
    if logger_provider is not None:
        _attach_log_handler(logger_provider)
    with _lock:
        _worker.ready(rec)
        _recorder = _worker


def reset() -> None:
    """Forget the mode and the recorder (the next request decides again); detach our handlers."""
    global _recorder
    with _lock:
        _recorder = None
        _worker.reset()
        handlers = list(_handlers)
        _handlers.clear()
    shutdown()
    for logger, ours, original in handlers:
        logger.removeHandler(ours)
        if original is not None:
            logger.addHandler(original)


def flush(timeout_s: float = 30.0) -> None:
    """Record the queued requests now (after a background exporter setup, if one is running),
    then export what the providers this module created hold (tests, benchmarks)."""
    thread = _setup_thread
    if thread is not None:
        thread.join(timeout_s)
    _worker.drain()
    for provider in list(_providers):
        provider.force_flush(int(timeout_s * 1000))


def shutdown() -> None:
    """Flush and stop the providers this module created (the SDK also does this at exit)."""
    while _providers:
        provider = _providers.pop()
        try:
            provider.shutdown()
        except Exception:  # noqa: BLE001
            pass


def _sdk_installed() -> bool:
    """Whether the process already runs an OpenTelemetry SDK (cheap: no import when not)."""
    if "opentelemetry.trace" not in sys.modules:
        return False
    from opentelemetry import metrics, trace

    # The API's proxy and no-op providers have no force_flush; the SDK's (and the distro's) do.
    return (hasattr(trace.get_tracer_provider(), "force_flush")
            and hasattr(metrics.get_meter_provider(), "force_flush"))


def _activate() -> Any:
    global _recorder, _setup_thread
    with _lock:
        if _recorder is not None:
            return _recorder
        how = mode()
        if how == "off":
            _recorder = _OFF
            return _recorder
        if how == "existing":
            _secure_existing_log_handlers()
        # Instruments are created, and for console/otlp/azure the SDK or the distro imported and
        # the exporters started, on a thread of their own; requests queue meanwhile.
        _worker.reset()
        _recorder = _worker
        _setup_thread = threading.Thread(target=_set_up, args=(how,), name="telemetry-setup",
                                         daemon=True)
        _setup_thread.start()
        return _recorder


def _set_up(how: str) -> None:
    global _recorder
    try:
        rec: Any = _Recorder.from_global() if how == "existing" else _build(how)
    except Exception as exc:  # noqa: BLE001 - no telemetry rather than a failing app
        log.warning("telemetry (%s) could not be set up, nothing is exported: %s", how,
                    type(exc).__name__)
        log.debug("telemetry setup failure", exc_info=True)
        rec = _OFF
    with _lock:
        if _recorder is _worker:
            _worker.ready(rec)          # records or drops what queued meanwhile
            if rec is _OFF:
                _recorder = _OFF


def _build(how: str) -> "_Recorder":
    if how == "azure":
        from azure.monitor.opentelemetry import configure_azure_monitor

        # Reads APPLICATIONINSIGHTS_CONNECTION_STRING and, for Entra ID ingestion,
        # APPLICATIONINSIGHTS_AUTHENTICATION_STRING. The distro hooks its raw log handler to the
        # logger it is given, then spends ~50 ms setting up instrumentations before it returns;
        # a record logged meanwhile would be exported with its arguments. So it is given a
        # logger nothing logs to, and its handler is then moved, sanitised, to ours.
        configure_azure_monitor(logger_name=_DISTRO_LOGGER, instrumentation_options={
            name: {"enabled": False} for name in
            ("django", "fastapi", "flask", "psycopg2", "requests", "urllib3", "httpx")})
        _adopt_log_handlers(logging.getLogger(_DISTRO_LOGGER))
        _secure_existing_log_handlers()
        return _Recorder.from_global()

    from opentelemetry.sdk._logs import LoggerProvider
    from opentelemetry.sdk._logs.export import BatchLogRecordProcessor
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    if how == "console":
        from opentelemetry.sdk._logs.export import ConsoleLogRecordExporter
        from opentelemetry.sdk.metrics.export import ConsoleMetricExporter
        from opentelemetry.sdk.trace.export import ConsoleSpanExporter

        spans, metrics, logs = (ConsoleSpanExporter(out=sys.stderr),
                                ConsoleMetricExporter(out=sys.stderr),
                                ConsoleLogRecordExporter(out=sys.stderr))
    elif how == "otlp":
        from opentelemetry.exporter.otlp.proto.http._log_exporter import OTLPLogExporter
        from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        spans, metrics, logs = OTLPSpanExporter(), OTLPMetricExporter(), OTLPLogExporter()
    else:
        raise ValueError(how)
    resource = Resource.create(
        {} if os.environ.get("OTEL_SERVICE_NAME") else {"service.name": SERVICE_NAME})
    tracer_provider = TracerProvider(resource=resource)
    tracer_provider.add_span_processor(BatchSpanProcessor(spans))
    meter_provider = MeterProvider(resource=resource,
                                   metric_readers=[PeriodicExportingMetricReader(metrics)])
    logger_provider = LoggerProvider(resource=resource)
    logger_provider.add_log_record_processor(BatchLogRecordProcessor(logs))
    _providers.extend((tracer_provider, meter_provider, logger_provider))
    _attach_log_handler(logger_provider)
    return _Recorder(tracer_provider, meter_provider)


def _failed() -> None:
    global _failures
    _failures += 1
    if _failures == 1:
        log.warning("telemetry: a request could not be recorded (further failures are counted)")
        log.debug("telemetry failure", exc_info=True)


# -- recording ------------------------------------------------------------------------------------

class _Worker:
    """Requests queued by the request threads and recorded by the telemetry thread.

    Measured in the service (bench/telemetry_overhead.py): recording a request right after it
    ran costs several times more CPU than recording requests back to back, because the SDK's
    long code paths are cold after an inference. So a request thread appends to a bounded deque
    (the oldest entries go if the thread falls behind; nothing ever waits for the SDK), and the
    telemetry thread wakes when there is work, lets requests gather for ``BATCH_DELAY_S``,
    records them back to back in chunks (counters once per chunk and attribute set), and yields
    the GIL between chunks so that request threads are not held up. Entries wait while there is
    no target yet (exporters starting)."""

    BATCH_DELAY_S = 0.1
    CHUNK = 16              # recorded between two GIL yields
    MAX_QUEUED = 4096

    def __init__(self) -> None:
        self.target: Any = None
        self._items: deque = deque(maxlen=self.MAX_QUEUED)
        self._wake = threading.Event()
        self._drain_lock = threading.Lock()
        self._start_lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._at_exit = False

    def submit(self, args: tuple) -> None:
        self._items.append((args, _current_context()))
        if self._thread is None:
            self._start()
        if not self._wake.is_set():
            self._wake.set()

    def ready(self, target: Any) -> None:
        """Record with ``target`` (a _Recorder, or _OFF to drop) from now on."""
        self.target = target
        if not self._at_exit:       # after the SDK's own exit hook: ours runs first
            self._at_exit = True
            atexit.register(self.drain)
        self._wake.set()

    def reset(self) -> None:
        with self._drain_lock:
            self.target = None
            self._items.clear()

    def _start(self) -> None:
        with self._start_lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="telemetry", daemon=True)
                self._thread.start()

    def _run(self) -> None:
        while True:
            self._wake.wait()
            time.sleep(self.BATCH_DELAY_S)
            self._wake.clear()
            self.drain()

    def drain(self) -> None:
        """Record everything queued, in this thread (the telemetry thread, flush(), exit)."""
        with self._drain_lock:
            target = self.target
            if target is None:
                return
            while self._items:
                chunk = []
                while self._items and len(chunk) < self.CHUNK:
                    chunk.append(self._items.popleft())
                if target is not _OFF:
                    try:
                        target.record_batch(chunk)
                    except Exception:  # noqa: BLE001
                        _failed()
                time.sleep(0)       # let waiting request threads have the GIL


_worker = _Worker()


def _current_context() -> Any:
    """The OpenTelemetry context of this thread, if OpenTelemetry is loaded at all (the Functions
    worker attaches the host's trace context here before calling the function)."""
    context = sys.modules.get("opentelemetry.context")
    return context.get_current() if context is not None else None


class _Recorder:
    def __init__(self, tracer_provider: Any, meter_provider: Any):
        from opentelemetry import context, trace
        from opentelemetry.metrics import Observation
        from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

        self._context = context
        self._propagator = TraceContextTextMapPropagator()
        self._trace = trace
        self._observation = Observation
        self.tracer = tracer_provider.get_tracer(SCOPE)
        meter = meter_provider.get_meter(SCOPE)
        # Under the Functions host the host's span is the request; ours is its child.
        self.functions_host = bool(os.environ.get("FUNCTIONS_WORKER_RUNTIME"))
        self._seq = itertools.count()   # 0: the process's first request (a cold start)

        self.requests = meter.create_counter(
            "embeddings.requests", "{request}", "Requests answered")
        self.tokens = meter.create_counter(
            "embeddings.tokens", "{token}", "Tokens run through the model (usage.prompt_tokens)")
        self.images = meter.create_counter(
            "embeddings.images", "{image}", "Images embedded")
        self.throttled = meter.create_counter(
            "embeddings.throttled", "{request}", "Requests answered 429")
        self.server_errors = meter.create_counter(
            "embeddings.server_errors", "{request}", "Requests answered 5xx")
        self.duration = meter.create_histogram(
            "embeddings.request.duration", "s", "Time from request to response, in the worker",
            explicit_bucket_boundaries_advisory=DURATION_BUCKETS)
        self.queue_duration = meter.create_histogram(
            "embeddings.queue.duration", "s", "Time a request waited in the inference queue",
            explicit_bucket_boundaries_advisory=DURATION_BUCKETS)
        meter.create_observable_gauge(
            "embeddings.queue.requests", [self._observe("requests")], "{request}",
            "Requests queued or running in the inference queue")
        meter.create_observable_gauge(
            "embeddings.queue.tokens", [self._observe("tokens")], "{token}",
            "Tokens queued and not started")
        meter.create_observable_gauge(
            "embeddings.queue.images", [self._observe("images")], "{image}",
            "Images queued and not started")

    @classmethod
    def from_global(cls) -> "_Recorder":
        from opentelemetry import metrics, trace

        return cls(trace.get_tracer_provider(), metrics.get_meter_provider())

    def _observe(self, unit: str):
        def callback(options: Any) -> list:
            total = 0
            for queue in list(_queues):
                stats = queue.stats()
                total += stats.jobs if unit == "requests" else stats.queued.get(unit, 0)
            return [self._observation(total)]
        return callback

    def record(self, trace: Any, method: str, status: int, error_code: str | None,
               start_ns: int, duration_s: float, parent: Any = None,
               invocation_trace: tuple[str, str] | None = None) -> None:
        """One request; ``parent``: its thread's OpenTelemetry context (None: no parent)."""
        self.record_batch([((trace, method, status, error_code, start_ns, duration_s,
                             invocation_trace), parent)])

    def record_batch(self, items: list) -> None:
        """Requests as queued by ``_Worker.submit``: ``((trace, method, status, error_code,
        start_ns, duration_s, invocation_trace), context)``. Each gets its span and histogram
        values; the counters get one sum per attribute set for the whole batch (the same totals,
        far fewer SDK calls)."""
        sums: dict[tuple, list] = {}
        try:
            for args, parent in items:
                try:
                    self._one(*args, parent, sums)
                except Exception:  # noqa: BLE001
                    _failed()
        finally:
            for attrs, requests, tokens, images, throttled, server_errors in sums.values():
                self.requests.add(requests, attrs)
                if tokens:
                    self.tokens.add(tokens, attrs)
                if images:
                    self.images.add(images, attrs)
                if throttled:
                    self.throttled.add(throttled, attrs)
                if server_errors:
                    self.server_errors.add(server_errors, attrs)

    def _one(self, trace: Any, method: str, status: int, error_code: str | None,
             start_ns: int, duration_s: float, invocation_trace: tuple[str, str] | None,
             parent: Any, sums: dict) -> None:
        # Metric attributes: bounded sets only (routes, deployments, callers, codes).
        key = (trace.route, status, trace.deployment, trace.caller, error_code)
        counted = sums.get(key)
        if counted is None:
            attrs: dict[str, Any] = {"http.route": trace.route,
                                     "http.response.status_code": status}
            if trace.deployment:
                attrs["embeddings.deployment"] = trace.deployment
            if trace.caller:
                attrs["embeddings.caller"] = trace.caller
            if error_code:
                attrs["error.type"] = error_code
            counted = sums[key] = [attrs, 0, 0, 0, 0, 0]
        attrs = counted[0]
        counted[1] += 1
        counted[2] += trace.tokens or 0
        counted[3] += trace.images or 0
        if status == 429:
            counted[4] += 1
        elif status >= 500:
            counted[5] += 1
        self.duration.record(duration_s, attrs)
        if trace.queue_s is not None:
            self.queue_duration.record(trace.queue_s, attrs)

        verb = method.upper()
        verb = verb if verb in HTTP_METHODS else None
        span_attrs = dict(attrs)        # a copy: the metrics keep theirs
        span_attrs["http.request.method"] = verb or "_OTHER"
        span_attrs["embeddings.request.id"] = trace.request_id
        span_attrs["embeddings.dialect"] = trace.dialect
        for key, value in (("embeddings.input.count", trace.inputs),
                           ("embeddings.token.count", trace.tokens),
                           ("embeddings.encoding", trace.encoding),
                           ("embeddings.dimensions", trace.dimensions)):
            if value is not None:
                span_attrs[key] = value
        if trace.images:
            span_attrs["embeddings.image.count"] = trace.images
        if trace.queue_s is not None:
            span_attrs["embeddings.queue_time_ms"] = round(trace.queue_s * 1000, 3)
        if trace.inference_s is not None:
            span_attrs["embeddings.inference_time_ms"] = round(trace.inference_s * 1000, 3)
        if next(self._seq) == 0:
            span_attrs["faas.coldstart"] = True

        ctx = parent if parent is not None else self._context.Context()   # not this thread's
        if invocation_trace is not None and \
                not self._trace.get_current_span(ctx).get_span_context().is_valid:
            # The worker attached no trace context to the request's thread (Python 3.13+'s
            # runtime does not for sync functions, older workers only with
            # PYTHON_ENABLE_OPENTELEMETRY): the invocation's own, which is the host's request.
            ctx = self._propagator.extract({"traceparent": invocation_trace[0],
                                            "tracestate": invocation_trace[1]}, context=ctx)
        kind = self._trace.SpanKind.SERVER
        if self.functions_host or self._trace.get_current_span(ctx).get_span_context().is_valid:
            kind = self._trace.SpanKind.INTERNAL
        span = self.tracer.start_span(f"{verb or 'HTTP'} {trace.route}", context=ctx, kind=kind,
                                      attributes=span_attrs, start_time=start_ns)
        if status >= 500:
            span.set_status(self._trace.Status(self._trace.StatusCode.ERROR, error_code))
        span.end(end_time=start_ns + int(duration_s * 1e9))


# -- exported logs --------------------------------------------------------------------------------

class SanitizingHandler(logging.Handler):
    """Passes records to an OpenTelemetry log handler without anything a client sent.

    Only records at ``EMBEDDINGS_TELEMETRY_LOG_LEVEL`` (default WARNING) and above; the message is
    the logger call's template with its arguments dropped; an exception becomes
    ``exception.type`` and ``exception.stacktrace`` (frames only, no message)."""

    def __init__(self, inner: logging.Handler):
        super().__init__(_log_level())
        self.inner = inner

    def emit(self, record: logging.LogRecord) -> None:
        try:
            template = record.msg if isinstance(record.msg, str) else type(record.msg).__name__
            safe = logging.LogRecord(record.name, record.levelno, record.pathname,
                                     record.lineno, template, None, None, record.funcName)
            safe.created, safe.msecs = record.created, record.msecs
            safe.thread, safe.threadName = record.thread, record.threadName
            if record.exc_info and record.exc_info[0] is not None:
                exc_type, _, tb = record.exc_info
                safe.__dict__["exception.type"] = f"{exc_type.__module__}.{exc_type.__qualname__}"
                safe.__dict__["exception.stacktrace"] = "".join(
                    traceback.format_list(traceback.extract_tb(tb)))
            self.inner.handle(safe)
        except Exception:  # noqa: BLE001
            self.handleError(record)

    def flush(self) -> None:
        self.inner.flush()


def _log_level() -> int:
    name = os.environ.get(ENV_LOG_LEVEL, "WARNING").strip().upper() or "WARNING"
    level = logging.getLevelName(name)
    if not isinstance(level, int):
        log.warning("%s must be a logging level (DEBUG, INFO, WARNING, ERROR, CRITICAL); "
                    "WARNING is used", ENV_LOG_LEVEL)
        return logging.WARNING
    return level


def _is_otel_handler(handler: logging.Handler) -> bool:
    return (type(handler).__name__ == "LoggingHandler"
            and type(handler).__module__.startswith("opentelemetry"))


def _attach_log_handler(logger_provider: Any) -> None:
    try:
        from opentelemetry.instrumentation.logging.handler import LoggingHandler
    except ImportError:  # pragma: no cover - the SDK's older copy
        from opentelemetry.sdk._logs import LoggingHandler
    logger = logging.getLogger(EXPORTED_LOGGER)
    ours = SanitizingHandler(LoggingHandler(logger_provider=logger_provider))
    logger.addHandler(ours)
    _handlers.append((logger, ours, None))


def _adopt_log_handlers(source: logging.Logger) -> None:
    """Move the OpenTelemetry log handlers of ``source`` to our logger, sanitised."""
    target = logging.getLogger(EXPORTED_LOGGER)
    for handler in list(source.handlers):
        if _is_otel_handler(handler):
            source.removeHandler(handler)
            ours = SanitizingHandler(handler)
            target.addHandler(ours)
            _handlers.append((target, ours, None))


def _secure_existing_log_handlers() -> None:
    """Wrap the OpenTelemetry log handlers someone else installed (the Functions worker's distro
    hooks the logger named by PYTHON_APPLICATIONINSIGHTS_LOGGER_NAME, the root logger by
    default) so that they see only sanitised records."""
    names = {"", EXPORTED_LOGGER, os.environ.get("PYTHON_APPLICATIONINSIGHTS_LOGGER_NAME", "")}
    for name in names:
        logger = logging.getLogger(name)
        for handler in list(logger.handlers):
            if _is_otel_handler(handler):
                ours = SanitizingHandler(handler)
                logger.removeHandler(handler)
                logger.addHandler(ours)
                _handlers.append((logger, ours, handler))


# The Functions worker configures the distro before importing the app: sanitise its log handler
# before anything in this package logs.
if "opentelemetry.trace" in sys.modules:
    _secure_existing_log_handlers()
