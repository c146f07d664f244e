"""Telemetry, read back through the OpenTelemetry SDK's in-memory exporters, with the real model.

One span and the usage metrics per request, per caller; the span is a child of the Functions
host's span when the worker has attached the host's trace context; nothing a client sent (text,
images, vectors, keys, bearer tokens, unknown field names) appears in anything exported or
logged; exporters that raise or block never fail or hold a request; the console and OTLP modes
(OTLP to a loopback collector) and the Azure Monitor path as the Functions worker sets it up (a
loopback ingestion endpoint, in a subprocess) carry the same data and no secret either.
"""

from __future__ import annotations

import base64
import gzip
import json
import logging
import os
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import SimpleNamespace
from typing import Any, Iterator

import pytest
from opentelemetry import context as otel_context
from opentelemetry.sdk._logs import LoggerProvider
from opentelemetry.sdk._logs.export import (BatchLogRecordProcessor, InMemoryLogRecordExporter,
                                            LogRecordExporter, LogRecordExportResult,
                                            SimpleLogRecordProcessor)
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import (InMemoryMetricReader, MetricExporter,
                                              MetricExportResult, PeriodicExportingMetricReader)
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import (BatchSpanProcessor, SimpleSpanProcessor,
                                            SpanExporter, SpanExportResult)
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from conftest import API_VERSION, DATA, ROOT
from embedding_core import service as service_module
from embedding_core import telemetry
from embedding_core.auth import Authenticator, key_fingerprint
from embedding_core.inference_queue import InferenceQueue
from embedding_core.service import ApiRequest, EmbeddingService
from embedding_core.settings import Settings
from jwt_factory import TokenFactory

KEY_A = "alpha-Kq7vN2xZ8wR4tY6u-telemetry-canary"
KEY_B = "beta-Jm3pL9sD5fG1hB0c-telemetry-canary"
TEXT = "Zyxwvut quokka-marmalade 7f3a9c is a telemetry canary sentence"
FIELD = "quokkafield7f3a9c"
TRACEPARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
METRIC_ATTRIBUTES = {"http.route", "http.response.status_code", "embeddings.deployment",
                     "embeddings.caller", "error.type"}


# -- helpers --------------------------------------------------------------------------------------

@dataclass
class Sinks:
    spans: InMemorySpanExporter
    reader: InMemoryMetricReader
    logs: InMemoryLogRecordExporter

    def finished(self) -> list:
        telemetry.flush()                       # the telemetry thread records in batches
        return sorted(self.spans.get_finished_spans(), key=lambda s: s.start_time)

    def metrics(self) -> dict[str, list[tuple[dict, Any]]]:
        telemetry.flush()
        out: dict[str, list] = {}
        data = self.reader.get_metrics_data()
        for rm in data.resource_metrics if data else ():
            for sm in rm.scope_metrics:
                for m in sm.metrics:
                    out.setdefault(m.name, []).extend(
                        (dict(p.attributes), p) for p in m.data.data_points)
        return out

    def exported_text(self) -> str:
        """Everything exported, serialised: the haystack for the secrets."""
        telemetry.flush()
        data = self.reader.get_metrics_data()
        return "\n".join([*(s.to_json() for s in self.spans.get_finished_spans()),
                          data.to_json() if data else "",
                          *(d.to_json() for d in self.logs.get_finished_logs())])


@pytest.fixture
def sinks():
    spans, reader = InMemorySpanExporter(), InMemoryMetricReader()
    logs = InMemoryLogRecordExporter()
    tp = TracerProvider()
    tp.add_span_processor(SimpleSpanProcessor(spans))
    mp = MeterProvider(metric_readers=[reader])
    lp = LoggerProvider()
    lp.add_log_record_processor(SimpleLogRecordProcessor(logs))
    telemetry.install(tp, mp, lp)
    yield Sinks(spans, reader, logs)
    telemetry.reset()
    for provider in (tp, mp, lp):
        provider.shutdown()


@pytest.fixture(autouse=True)
def clean_env(monkeypatch):
    for name in list(os.environ):
        if name.startswith(("EMBEDDINGS_", "OTEL_", "APPLICATIONINSIGHTS_")) or \
                name == "FUNCTIONS_WORKER_RUNTIME":
            monkeypatch.delenv(name)
    yield
    telemetry.reset()


def make(registry, keys=(KEY_A, KEY_B), **kwargs) -> EmbeddingService:
    return EmbeddingService(Settings.from_env({"EMBEDDINGS_API_KEYS": ",".join(keys)}), registry,
                            **kwargs)


def call(svc: EmbeddingService, body: Any, *, key: str | None = KEY_A, route: str = "embeddings",
         headers: dict[str, str] | None = None, invocation: Any = None):
    h = {"content-type": "application/json", **(headers or {})}
    if key is not None:
        h["api-key"] = key
    query = {} if route.startswith("v1/") else {"api-version": API_VERSION}
    res = svc.handle(route, ApiRequest.from_url("POST", "https://app.example/" + route, h, query,
                                                json.dumps(body).encode(), invocation=invocation))
    return res, json.loads(res.body)


def caller(key: str) -> str:
    return key_fingerprint(key.encode())


# -- what a request records -----------------------------------------------------------------------

def test_one_span_and_the_usage_metrics_per_request_per_caller(sinks, registry):
    svc = make(registry)
    a1, d_a1 = call(svc, {"input": ["first text", "second text"]}, key=KEY_A)
    a2, d_a2 = call(svc, {"input": ["third text"], "model": "all-MiniLM-L6-v2"}, key=None,
                    route="v1/embeddings", headers={"authorization": f"Bearer {KEY_A}"})
    b1, d_b1 = call(svc, {"input": ["hello"], "encoding_format": "int8", "dimensions": 384},
                    key=KEY_B)
    b2, _ = call(svc, {"input": []}, key=KEY_B)
    nobody, _ = call(svc, {"input": ["hello"]}, key="not-a-key")
    assert [r.status for r in (a1, a2, b1, b2, nobody)] == [200, 200, 200, 422, 401]

    spans = sinks.finished()
    assert len(spans) == 5
    for span, res in zip(spans, (a1, a2, b1, b2, nobody)):
        assert span.kind == SpanKind.SERVER and span.parent is None    # no Functions host here
        assert span.attributes["embeddings.request.id"] == res.headers["x-request-id"]
        assert span.attributes["http.response.status_code"] == res.status
        assert span.attributes["http.request.method"] == "POST"
        assert span.end_time >= span.start_time
        assert span.status.status_code == StatusCode.UNSET             # 4xx are not our errors
    s_a1, s_a2, s_b1, s_b2, s_nobody = (dict(s.attributes) for s in spans)
    assert spans[0].name == "POST /embeddings" and spans[1].name == "POST /v1/embeddings"
    assert s_a1["embeddings.caller"] == s_a2["embeddings.caller"] == caller(KEY_A)
    assert s_b1["embeddings.caller"] == s_b2["embeddings.caller"] == caller(KEY_B)
    assert "embeddings.caller" not in s_nobody and s_nobody["error.type"] == "Unauthorized"
    assert s_b2["error.type"] == "InvalidParameter"
    assert (s_a1["embeddings.dialect"], s_a2["embeddings.dialect"]) == ("azure", "openai")
    assert (s_a1["http.route"], s_a2["http.route"]) == ("/embeddings", "/v1/embeddings")
    assert s_a1["embeddings.token.count"] == d_a1["usage"]["prompt_tokens"]
    assert s_a2["embeddings.token.count"] == d_a2["usage"]["prompt_tokens"]
    assert s_b1["embeddings.token.count"] == d_b1["usage"]["prompt_tokens"]
    assert (s_a1["embeddings.input.count"], s_b1["embeddings.input.count"]) == (2, 1)
    assert (s_a1["embeddings.encoding"], s_a2["embeddings.encoding"], s_b1["embeddings.encoding"]) \
        == ("float", "float", "int8")
    assert s_a1["embeddings.dimensions"] == 384
    for s in (s_a1, s_a2, s_b1):
        assert s["embeddings.deployment"] == "all-MiniLM-L6-v2"
        assert s["embeddings.queue_time_ms"] >= 0 and s["embeddings.inference_time_ms"] > 0
    assert "embeddings.token.count" not in s_b2 and "embeddings.queue_time_ms" not in s_b2
    assert s_a1["faas.coldstart"] is True                          # the recorder's first request
    assert not any("faas.coldstart" in s for s in (s_a2, s_b1, s_b2, s_nobody))

    metrics = sinks.metrics()

    def total(name, **match):
        return sum(p.value for a, p in metrics.get(name, [])
                   if all(a.get(k) == v for k, v in match.items()))

    assert total("embeddings.requests", **{"embeddings.caller": caller(KEY_A)}) == 2
    assert total("embeddings.requests", **{"embeddings.caller": caller(KEY_B)}) == 2
    assert total("embeddings.requests", **{"http.response.status_code": 401}) == 1
    assert total("embeddings.requests", **{"error.type": "InvalidParameter"}) == 1
    assert total("embeddings.requests", **{"http.route": "/v1/embeddings"}) == 1
    assert total("embeddings.tokens", **{"embeddings.caller": caller(KEY_A)}) == \
        d_a1["usage"]["prompt_tokens"] + d_a2["usage"]["prompt_tokens"]
    assert total("embeddings.tokens", **{"embeddings.caller": caller(KEY_B)}) == \
        d_b1["usage"]["prompt_tokens"]
    assert "embeddings.images" not in metrics                        # no image was embedded
    durations = metrics["embeddings.request.duration"]
    assert sum(p.count for _, p in durations) == 5
    assert sum(p.count for _, p in metrics["embeddings.queue.duration"]) == 3   # the 200s
    assert "embeddings.throttled" not in metrics and "embeddings.server_errors" not in metrics
    for name in ("embeddings.queue.requests", "embeddings.queue.tokens", "embeddings.queue.images"):
        assert [p.value for _, p in metrics[name]] == [0]            # idle again
    for name, points in metrics.items():                             # bounded attributes only
        for attrs, _ in points:
            assert set(attrs) <= METRIC_ATTRIBUTES, (name, attrs)


def test_the_telemetry_thread_records_without_being_asked(registry):
    """Requests are recorded by the telemetry thread, not by the request thread (tests usually
    call telemetry.flush(); here nothing does)."""
    exporter = InMemorySpanExporter()
    tp = TracerProvider()
    tp.add_span_processor(SimpleSpanProcessor(exporter))
    telemetry.install(tp, MeterProvider())
    svc = make(registry)
    recorded_by = []
    exporter.export = lambda spans, _export=exporter.export: (
        recorded_by.append(threading.current_thread().name), _export(spans))[1]
    call(svc, {"input": ["hello"]})
    call(svc, {"input": ["world"]})
    deadline = time.monotonic() + 60                                  # liveness, not timing
    while len(exporter.get_finished_spans()) < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert len(exporter.get_finished_spans()) == 2
    assert set(recorded_by) == {"telemetry"}
    telemetry.reset()
    tp.shutdown()


def test_queued_requests_are_recorded_at_exit():
    code = FUNCTION_CALL + "assert embed('hello', 'local-key-0123456789').status_code == 200\n"  # no flush: exit
    env = {"EMBEDDINGS_API_KEYS": "local-key-0123456789", "EMBEDDINGS_TELEMETRY": "console"}
    base = {k: v for k, v in os.environ.items()
            if not k.startswith(("EMBEDDINGS_", "OTEL_", "APPLICATIONINSIGHTS_"))}
    # Wait for the exporters to be set up (a real process lives that long), then exit.
    code += "from embedding_core import telemetry; telemetry._setup_thread.join(60)\n"
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env={**base, **env},
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert '"name": "POST /embeddings"' in proc.stderr
    assert '"embeddings.requests"' in proc.stderr


def test_images_are_counted(sinks, registry):
    svc = make(registry)
    image = "data:image/jpeg;base64," + base64.b64encode(
        (DATA / "images" / "synthetic" / "cat_grey.jpg").read_bytes()).decode()
    res, doc = call(svc, {"input": [{"image": image}, {"image": image, "text": "a cat"}]},
                    route="images/embeddings")
    assert res.status == 200
    span = dict(sinks.finished()[0].attributes)
    assert span["http.route"] == "/images/embeddings" and span["embeddings.image.count"] == 2
    assert span["embeddings.token.count"] == doc["usage"]["prompt_tokens"]
    images = sinks.metrics()["embeddings.images"]
    assert [(a["embeddings.caller"], p.value) for a, p in images] == [(caller(KEY_A), 2)]


def test_images_of_a_request_that_fails_are_not_counted_as_embedded(sinks, registry):
    # The items' text needs more than the 4 queued tokens the queue admits: a 429.
    svc = make(registry, queue=InferenceQueue({"tokens": 4, "images": 100}))
    image = "data:image/jpeg;base64," + base64.b64encode(
        (DATA / "images" / "synthetic" / "cat_grey.jpg").read_bytes()).decode()
    res, _ = call(svc, {"input": [{"image": image, "text": "a photo of a grey cat on a sofa"}] * 2},
                  route="images/embeddings")
    assert res.status == 429
    metrics = sinks.metrics()
    assert [p.value for _, p in metrics["embeddings.throttled"]] == [1]
    assert "embeddings.images" not in metrics


def test_throttled_and_server_error_requests_are_counted(sinks, registry, monkeypatch):
    # A real queue that admits 4 queued tokens: "hello world" ([CLS] hello world [SEP]) fits,
    # a longer input is answered 429 by the queue's admission control.
    svc = make(registry, queue=InferenceQueue({"tokens": 4, "images": 1}))
    ok, _ = call(svc, {"input": ["hello world"]})
    busy, _ = call(svc, {"input": ["a sentence that has more than four tokens"]})
    assert (ok.status, busy.status) == (200, 429)
    # A misconfigured process answers 500 (the handler never ran: no caller, no deployment).
    monkeypatch.setenv("EMBEDDINGS_MAX_INPUTS", "many")
    service_module.reset_service()
    try:
        broken = service_module.dispatch("embeddings", ApiRequest(
            "POST", "/embeddings", {"api-key": KEY_A}, {"api-version": API_VERSION}, b"{}"))
    finally:
        service_module.reset_service()
    assert broken.status == 500

    metrics = sinks.metrics()
    throttled = metrics["embeddings.throttled"]
    assert [(a, p.value) for a, p in throttled] == [(
        {"http.route": "/embeddings", "http.response.status_code": 429,
         "embeddings.deployment": "all-MiniLM-L6-v2", "embeddings.caller": caller(KEY_A),
         "error.type": "TooManyRequests"}, 1)]
    errors = metrics["embeddings.server_errors"]
    assert [(a, p.value) for a, p in errors] == [(
        {"http.route": "/embeddings", "http.response.status_code": 500,
         "error.type": "InternalServerError"}, 1)]
    spans = sinks.finished()
    assert [s.status.status_code for s in spans] == [StatusCode.UNSET, StatusCode.UNSET,
                                                     StatusCode.ERROR]
    assert spans[2].status.description == "InternalServerError"


def test_the_span_is_a_child_of_the_functions_host_span(sinks, registry, monkeypatch):
    """The Functions worker attaches the host's trace context to the invocation's thread
    (``configure_opentelemetry``: TraceContextTextMapPropagator().extract + context.attach);
    the host already reports the request, so ours is an INTERNAL child, not a second request."""
    svc = make(registry)
    parent = TraceContextTextMapPropagator().extract({"traceparent": TRACEPARENT})
    token = otel_context.attach(parent)
    try:
        res, _ = call(svc, {"input": ["hello"]})
    finally:
        otel_context.detach(token)
    assert res.status == 200
    (span,) = sinks.finished()
    assert span.kind == SpanKind.INTERNAL
    assert span.context.trace_id == 0x0af7651916cd43dd8448eb211c80319c
    assert span.parent.span_id == 0xb7ad6b7169203331 and span.parent.is_remote
    # Under the Functions host without a parent (the worker's OpenTelemetry integration off):
    # still not a second request.
    monkeypatch.setenv("FUNCTIONS_WORKER_RUNTIME", "python")
    tp = TracerProvider()
    exporter = InMemorySpanExporter()
    tp.add_span_processor(SimpleSpanProcessor(exporter))
    telemetry.install(tp, MeterProvider())
    call(svc, {"input": ["hello"]})
    telemetry.flush()
    assert [s.kind for s in exporter.get_finished_spans()] == [SpanKind.INTERNAL]


def invocation(traceparent: Any, tracestate: Any = "") -> Any:
    """What the Functions worker passes a function as ``context`` (only what is read of it)."""
    return SimpleNamespace(invocation_id="0d1c2b3a", function_name="embeddings",
                           trace_context=SimpleNamespace(trace_parent=traceparent,
                                                         trace_state=tracestate, attributes={}))


def test_without_an_attached_context_the_invocations_trace_context_is_the_parent(
        sinks, registry, monkeypatch):
    """Python 3.13+'s runtime (azure-functions-runtime 1.3.0) attaches the host's trace context
    in its event loop only, not in the thread a sync function runs in, and older workers only
    with PYTHON_ENABLE_OPENTELEMETRY: then the invocation's ``context.trace_context``, which
    every worker passes, is the parent. A context the worker did attach comes first."""
    monkeypatch.setenv("FUNCTIONS_WORKER_RUNTIME", "python")
    svc = make(registry)
    res, _ = call(svc, {"input": ["hello"]},
                  invocation=invocation(TRACEPARENT, "congo=t61rcWkgMzE"))
    assert res.status == 200
    (span,) = sinks.finished()
    assert span.kind == SpanKind.INTERNAL
    assert span.context.trace_id == 0x0af7651916cd43dd8448eb211c80319c
    assert span.parent.span_id == 0xb7ad6b7169203331 and span.parent.is_remote
    assert span.parent.trace_state.get("congo") == "t61rcWkgMzE"

    attached = "00-11111111111111111111111111111111-2222222222222222-01"
    token = otel_context.attach(TraceContextTextMapPropagator().extract(
        {"traceparent": attached}))
    try:
        call(svc, {"input": ["hello"]}, invocation=invocation(TRACEPARENT))
    finally:
        otel_context.detach(token)
    (span,) = sinks.finished()[1:]
    assert span.context.trace_id == 0x11111111111111111111111111111111

    # Nothing usable: a span of its own, and the request unharmed.
    for bad in ("", None, "not-a-traceparent", "00-" + "0" * 32 + "-" + "0" * 16 + "-01", 42):
        res, _ = call(svc, {"input": ["hello"]}, invocation=invocation(bad, None))
        assert res.status == 200
    assert [s.parent for s in sinks.finished()[2:]] == [None] * 5


def bare_recorder() -> tuple[Any, InMemorySpanExporter]:
    """The recorder the telemetry thread runs, alone: what it makes of one request's record."""
    spans = InMemorySpanExporter()
    tp = TracerProvider()
    tp.add_span_processor(SimpleSpanProcessor(spans))
    return telemetry._Recorder(tp, MeterProvider()), spans


def test_a_request_answered_before_opentelemetry_loaded_is_a_child_of_its_invocation():
    """The process's first request in console, otlp or azure mode is answered while the
    exporters still start (off the request path), so no context was attached to its thread;
    its invocation's trace context is the parent all the same, or the cold start's span would
    be an orphan in Application Insights. (In this process OpenTelemetry is always loaded, so
    requests never reach this path: the recorder is called as the telemetry thread calls it.)"""
    from embedding_core.pipeline import Trace

    recorder, spans = bare_recorder()
    recorder.record(Trace("r1", route="/embeddings", dialect="azure"), "POST", 200, None,
                    time.time_ns(), 0.01, parent=None, invocation_trace=(TRACEPARENT, ""))
    (span,) = spans.get_finished_spans()
    assert span.context.trace_id == 0x0af7651916cd43dd8448eb211c80319c
    assert span.parent is not None and span.parent.span_id == 0xb7ad6b7169203331


def test_a_span_lasts_as_long_as_its_request_not_until_it_was_recorded():
    """Requests are recorded later, in batches on the telemetry thread; the span's end is the
    request's, not the moment it was recorded."""
    from embedding_core.pipeline import Trace

    recorder, spans = bare_recorder()
    start = time.time_ns() - 10 * 10**9                  # a request that began 10 s ago
    recorder.record(Trace("r1", route="/embeddings", dialect="azure"), "POST", 200, None,
                    start, 0.25)
    (span,) = spans.get_finished_spans()
    assert (span.start_time, span.end_time) == (start, start + 250_000_000)


def test_the_queue_gauges_count_the_requests_running_and_queued(sinks):
    """embeddings.queue.requests counts jobs, running ones too (the other tests only see an
    idle queue, where every gauge is 0)."""
    from test_queue import GateLane, job

    lane = GateLane(max_batch_items=1)
    q = InferenceQueue({"tokens": 10**6}, workers=1)
    telemetry.watch_queue(q)
    running = q.submit(job(lane, "r", [5]))
    waiting = None
    try:
        assert lane.entered.acquire(timeout=10)            # running, its 5 tokens taken
        waiting = q.submit(job(lane, "w", [7, 7]))
        gauges = {name: sum(p.value for _, p in points)
                  for name, points in sinks.metrics().items() if name.startswith("embeddings.queue.")
                  and name != "embeddings.queue.duration"}
        assert gauges == {"embeddings.queue.requests": 2, "embeddings.queue.tokens": 14,
                          "embeddings.queue.images": 0}
    finally:
        for _ in range(3):
            lane.gate.release()
        q.wait(running, 10)
        if waiting is not None:
            q.wait(waiting, 10)
        q.stop()


def test_the_invocation_context_is_attached_for_the_request_only(registry, monkeypatch):
    """The invocation's trace context is the request thread's while the request runs, whatever
    the handler does, and gone after it (a worker's pooled thread carries nothing into its next
    request); a context the worker attached is kept, and unusable values attach nothing."""
    import concurrent.futures

    from opentelemetry import trace as otel_trace

    from embedding_core import errors as errors_module
    monkeypatch.setattr(telemetry, "_recorder", telemetry._OFF)
    seen = []

    def handler(kind):
        def run(_):
            seen.append(otel_trace.get_current_span().get_span_context().trace_id)
            if kind == "api":
                raise errors_module.ApiError(400, "InvalidRequestBody", "x")
            if kind == "error":
                raise RuntimeError("boom")
            return {}
        return run

    def one(kind, traceparent=TRACEPARENT):
        req = ApiRequest("GET", "/health", {},
                         invocation_trace=(traceparent, "") if traceparent else None)
        status = service_module.run_request(req, "azure", "health", handler(kind)).status
        return status, otel_trace.get_current_span().get_span_context().is_valid

    failures = telemetry._failures
    with concurrent.futures.ThreadPoolExecutor(1) as pool:     # one pooled thread throughout
        assert [pool.submit(one, kind).result() for kind in ("ok", "api", "error", "ok")] == \
            [(200, False), (400, False), (500, False), (200, False)]
        assert pool.submit(one, "ok", "garbage").result() == (200, False)
        assert pool.submit(one, "ok", None).result() == (200, False)
    assert seen == [0x0af7651916cd43dd8448eb211c80319c] * 4 + [0, 0]

    attached = "00-11111111111111111111111111111111-2222222222222222-01"
    token = otel_context.attach(TraceContextTextMapPropagator().extract(
        {"traceparent": attached}))
    try:
        assert one("ok") == (200, True)
        assert otel_trace.get_current_span().get_span_context().trace_id == \
            0x11111111111111111111111111111111
    finally:
        otel_context.detach(token)
    assert seen[-1] == 0x11111111111111111111111111111111
    assert telemetry._failures == failures


# -- what is never exported -----------------------------------------------------------------------

def vector_fragments(doc: dict) -> list[str]:
    out = []
    for item in doc["data"]:
        emb = item["embedding"]
        out += [emb[:24]] if isinstance(emb, str) else [repr(x) for x in emb[:8]]
    return out


def test_no_key_token_text_image_or_vector_in_exports_or_logs(sinks, registry, caplog,
                                                              monkeypatch):
    idp = TokenFactory()
    settings = Settings.from_env({"EMBEDDINGS_API_KEYS": KEY_A, **idp.env()})
    svc = EmbeddingService(settings, registry,
                           authenticator=Authenticator(settings, idp.validator()))
    token, refused_token = idp.mint(), idp.mint(aud="api://someone-else")
    image_b64 = base64.b64encode(
        (DATA / "images" / "synthetic" / "cat_exif6.jpg").read_bytes()).decode()
    caplog.set_level(logging.DEBUG)

    results = [
        call(svc, {"input": [TEXT]}),
        call(svc, {"input": [TEXT], "encoding_format": "base64"}, key=None,
             headers={"authorization": f"Bearer {KEY_A}"}),
        call(svc, {"input": [TEXT, "and another"]}, key=None,
             headers={"authorization": f"Bearer {token}"}),
        call(svc, {"input": [TEXT]}, key=None, route="v1/embeddings",
             headers={"authorization": f"Bearer {token}"}),
        call(svc, {"input": [{"image": f"data:image/jpeg;base64,{image_b64}", "text": TEXT}]},
             route="images/embeddings"),
        call(svc, {"input": [TEXT]}, key=None,
             headers={"authorization": f"Bearer {refused_token}"}),
        call(svc, {"input": [TEXT]}, key="wrong-" + KEY_A),
        call(svc, {"input": [TEXT], FIELD: 1}),                     # the message echoes FIELD
    ]
    assert [r.status for r, _ in results] == [200, 200, 200, 200, 200, 401, 401, 400]
    assert FIELD in results[-1][1]["error"]["message"]              # ... to the client only
    spans = {s.attributes["embeddings.request.id"]: s for s in sinks.finished()}
    assert spans[results[2][0].headers["x-request-id"]].attributes["embeddings.caller"] == \
        f"entra:{idp.client_id}"

    secrets = [KEY_A, token, token.rsplit(".", 1)[-1], refused_token, TEXT, "quokka-marmalade",
               FIELD, image_b64[100:140]]
    vectors = [f for _, doc in results[:5] for f in vector_fragments(doc)]
    logged = caplog.text + "\n".join(str(r.__dict__) for r in caplog.records)
    for haystack, where in ((sinks.exported_text(), "exported"), (logged, "logged")):
        for needle in secrets + vectors:
            assert needle not in haystack, f"{needle[:20]}… {where}"

    # An unexpected failure whose exception message carries client text and a key: the local
    # log keeps the cause; the exported record has the exception's type and frames only.
    def fail(request, route, trace):
        raise RuntimeError(f"could not embed {TEXT!r} for {KEY_A}")
    monkeypatch.setattr(svc.pipeline, "embed", fail)
    res, doc = call(svc, {"input": [TEXT]})
    assert res.status == 500 and TEXT not in json.dumps(doc)
    exported = sinks.exported_text()
    for needle in secrets:
        assert needle not in exported, needle[:20]
    (record,) = [d.log_record for d in sinks.logs.get_finished_logs()
                 if d.log_record.attributes.get("exception.type")]
    assert record.body == "request %s failed"
    assert record.attributes["exception.type"] == "builtins.RuntimeError"
    assert "in fail" in record.attributes["exception.stacktrace"]
    assert "exception.message" not in record.attributes


def test_exported_logs_are_warnings_and_above_templates_without_arguments(sinks):
    logger = logging.getLogger("embedding_core.test")
    logger.info("request %s took %s", TEXT, KEY_A)
    logger.warning("refused %s with %s", TEXT, KEY_A)
    logger.warning(f"an f-string is exported as written: {'ok'}")
    bodies = [d.log_record.body for d in sinks.logs.get_finished_logs()]
    assert bodies == ["refused %s with %s", "an f-string is exported as written: ok"]


def test_exported_configuration_errors_name_the_setting_and_request_lines_stay_local(
        sinks, registry, monkeypatch, caplog):
    """The exported copy of a log record keeps only its template: a bad setting was exported as
    "service configuration error (...)" and a refused key as the literal "%s", so the operator's
    Application Insights never said what was wrong. And every request's INFO line (its path
    included) is forwarded by the Functions worker to the host, which exports it: a billed row
    per call. It is DEBUG now, with the route, not the path."""
    from embedding_core.service import CATCH_ALL

    def misconfigured(**env):
        for name, value in env.items():
            monkeypatch.setenv(name, value)
        service_module.reset_service()
        try:
            with caplog.at_level(logging.DEBUG, logger="embedding_core"):
                res = service_module.dispatch("embeddings", ApiRequest(
                    "POST", "/embeddings", {"content-type": "application/json"},
                    {"api-version": API_VERSION}, b'{"input": ["a"]}'))
        finally:
            for name in env:
                monkeypatch.delenv(name)
            service_module.reset_service()
        assert res.status == 500
    misconfigured(EMBEDDINGS_MAX_INPUTS="many")
    misconfigured(EMBEDDINGS_ENTRA_TENANT_ID="00000000-0000-0000-0000-000000000001")
    # a plain key with ':' read as name:key, its remainder refused: the "name" is the key's start
    EmbeddingService(Settings.from_env(
        {"EMBEDDINGS_API_KEYS": f"{KEY_A},tiny,Xk9fQ2LmT7pR4sVbN3wZ:a8"}), registry)
    svc = make(registry)
    with caplog.at_level(logging.DEBUG, logger="embedding_core"):
        svc.handle(CATCH_ALL, ApiRequest("GET", "/v1/" + TEXT.replace(" ", "-"),
                                         {"api-key": KEY_A}, {}, b""))
        call(svc, {"input": ["hello"]}, route="v1/embeddings")
    bodies = [d.log_record.body for d in sinks.logs.get_finished_logs()]
    assert any(b.startswith("service configuration error, invalid setting EMBEDDINGS_MAX_INPUTS")
               for b in bodies), bodies
    assert any(b.startswith("service configuration error, invalid setting "
                            "EMBEDDINGS_ENTRA_TENANT_ID, EMBEDDINGS_ENTRA_AUDIENCES") for b in bodies), bodies
    assert any("shorter than 16 characters" in b for b in bodies), bodies
    assert "%s" not in bodies and not any("many" in b for b in bodies), bodies
    assert "Xk9fQ2LmT7pR4sVbN3wZ" not in sinks.exported_text()
    lines = [r for r in caplog.records if " -> " in r.getMessage()]
    assert lines and all(r.levelno == logging.DEBUG for r in lines)
    assert not any(TEXT.replace(" ", "-") in r.getMessage() for r in lines)


def test_a_configuration_error_is_logged_once_by_concurrent_requests(monkeypatch):
    """Requests failing together on a wrong setting log it once, not once each (16 concurrent
    requests wrote 16 tracebacks while the first was still being logged; review h_chaos1 F4)."""
    import threading
    import time

    class Slow(logging.Handler):    # an exporter's handler takes a while
        def __init__(self):
            super().__init__()
            self.records = []

        def emit(self, record):
            time.sleep(0.05)
            self.records.append(record.getMessage())

    handler = Slow()
    logger = logging.getLogger(service_module.log.name)
    logger.addHandler(handler)
    monkeypatch.setenv("EMBEDDINGS_MAX_INPUTS", "many")
    service_module.reset_service()
    start = threading.Barrier(16)
    statuses = []

    def call():
        start.wait()
        statuses.append(service_module.dispatch("health", ApiRequest("GET", "/health", {}, {},
                                                                     b"")).status)
    threads = [threading.Thread(target=call) for _ in range(16)]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
    finally:
        logger.removeHandler(handler)
        service_module.reset_service()
    assert statuses == [500] * 16
    assert [m for m in handler.records if m.startswith("service configuration error")] == [
        "service configuration error, invalid setting EMBEDDINGS_MAX_INPUTS (answering 500 "
        "until it is fixed)"]


def test_a_service_that_could_not_start_for_another_reason_answers_a_retryable_500(
        monkeypatch, caplog):
    """Not every failure to build the service is the configuration's (a thread that could not
    start, memory): the 500 is then the plain internal error, without ``x-should-retry: false``
    (the next request tries again, and succeeds once it passes); a wrong setting's says so."""
    def dispatch():
        res = service_module.dispatch("embeddings", ApiRequest(
            "POST", "/embeddings", {"content-type": "application/json"},
            {"api-version": API_VERSION}, b'{"input": ["a"]}'))
        return res.status, res.headers, json.loads(res.body)["error"]["message"]

    def no_memory(cls):
        raise MemoryError()
    service_module.reset_service()
    monkeypatch.setattr(EmbeddingService, "from_env", classmethod(no_memory))
    try:
        with caplog.at_level(logging.ERROR, logger="embedding_core"):
            status, headers, message = dispatch()
        assert status == 500 and "x-should-retry" not in headers
        assert message.startswith("The server failed to process the request.")
        assert [r.getMessage() for r in caplog.records] == [
            "the service could not start, MemoryError (answering 500; each request tries again)"]
        monkeypatch.undo()
        monkeypatch.setenv("EMBEDDINGS_MAX_INPUTS", "many")
        status, headers, message = dispatch()
        assert status == 500 and headers["x-should-retry"] == "false"
        assert message.startswith("The server's configuration is invalid")
        monkeypatch.delenv("EMBEDDINGS_MAX_INPUTS")
        assert dispatch()[0] == 401              # started: no key sent
        # A registry file that cannot be read may be there next time (a share mounting): the
        # 500 stays retryable, and the log says so instead of "until it is fixed" (h_user4 8).
        service_module.reset_service()
        monkeypatch.setenv("EMBEDDINGS_REGISTRY", "/nonexistent/registry.json")
        caplog.clear()
        with caplog.at_level(logging.ERROR, logger="embedding_core"):
            status, headers, message = dispatch()
        assert status == 500 and "x-should-retry" not in headers
        assert message.startswith("The server's configuration is invalid")
        assert [r.getMessage() for r in caplog.records] == [
            "service configuration error, unreadable registry (EMBEDDINGS_REGISTRY or "
            "embedding_core/registry.json) (answering 500; each request tries again)"]
    finally:
        service_module.reset_service()


# -- exporter failures ----------------------------------------------------------------------------

class RaisingSpans(SpanExporter):
    def export(self, spans):
        raise RuntimeError("span exporter down")


class RaisingMetrics(MetricExporter):
    def __init__(self):
        super().__init__()
        self.calls = threading.Event()

    def export(self, metrics_data, timeout_millis=10_000, **kwargs):
        self.calls.set()
        raise RuntimeError("metric exporter down")

    def force_flush(self, timeout_millis=10_000):
        return True

    def shutdown(self, timeout_millis=30_000, **kwargs):
        pass


class RaisingLogs(LogRecordExporter):
    def export(self, batch):
        raise RuntimeError("log exporter down")

    def force_flush(self, timeout_millis=30_000):
        return True

    def shutdown(self):
        pass


class Gate:
    """Exporters that block until released."""

    def __init__(self):
        self.entered = threading.Event()
        self.release = threading.Event()

    def block(self):
        self.entered.set()
        self.release.wait(120)


class BlockingSpans(SpanExporter):
    def __init__(self, gate):
        self.gate = gate

    def export(self, spans):
        self.gate.block()
        return SpanExportResult.SUCCESS


class BlockingMetrics(MetricExporter):
    def __init__(self, gate):
        super().__init__()
        self.gate = gate

    def export(self, metrics_data, timeout_millis=10_000, **kwargs):
        self.gate.block()
        return MetricExportResult.SUCCESS

    def force_flush(self, timeout_millis=10_000):
        return True

    def shutdown(self, timeout_millis=30_000, **kwargs):
        pass


class BlockingLogs(LogRecordExporter):
    def __init__(self, gate):
        self.gate = gate

    def export(self, batch):
        self.gate.block()
        return LogRecordExportResult.SUCCESS

    def force_flush(self, timeout_millis=30_000):
        return True

    def shutdown(self):
        pass


def embed_ok(svc, n=1):
    for i in range(n):
        res, doc = call(svc, {"input": [f"text number {i}"]})
        assert res.status == 200 and len(doc["data"][0]["embedding"]) == 384


def test_exporters_that_raise_never_fail_a_request(registry):
    tp = TracerProvider()
    tp.add_span_processor(SimpleSpanProcessor(RaisingSpans()))      # exports inside span.end()
    metrics = RaisingMetrics()
    mp = MeterProvider(metric_readers=[PeriodicExportingMetricReader(metrics, 10)])
    lp = LoggerProvider()
    lp.add_log_record_processor(SimpleLogRecordProcessor(RaisingLogs()))
    telemetry.install(tp, mp, lp)
    svc = make(registry)
    try:
        embed_ok(svc, 3)
        assert metrics.calls.wait(60)
        embed_ok(svc, 2)
        res, _ = call(svc, {"input": ["x"], FIELD: 1})               # a logged 4xx path
        assert res.status == 400
        logging.getLogger("embedding_core.test").error("an error record for the exporter")
    finally:
        telemetry.reset()
        for provider in (tp, mp, lp):
            provider.shutdown()


def test_exporters_that_block_never_hold_a_request(registry):
    gate = Gate()
    tp = TracerProvider()
    small = {"max_queue_size": 8, "max_export_batch_size": 4, "schedule_delay_millis": 1}
    tp.add_span_processor(BatchSpanProcessor(BlockingSpans(gate), **small))
    mp = MeterProvider(metric_readers=[PeriodicExportingMetricReader(BlockingMetrics(gate), 10)])
    lp = LoggerProvider()
    lp.add_log_record_processor(BatchLogRecordProcessor(BlockingLogs(gate), **small))
    telemetry.install(tp, mp, lp)
    svc = make(registry)
    done = []
    try:
        embed_ok(svc)
        assert gate.entered.wait(60)                                  # an exporter is stuck now

        def many():
            embed_ok(svc, 20)                                         # more than the queues hold
            for _ in range(20):
                logging.getLogger("embedding_core.test").warning("a warning for the exporter")
            done.append(True)
        worker = threading.Thread(target=many)
        worker.start()
        worker.join(300)                                              # liveness, not timing
        assert done == [True]
    finally:
        gate.release.set()
        telemetry.reset()
        for provider in (tp, mp, lp):
            provider.shutdown()


class _BrokenInstrument:
    def add(self, *args, **kwargs):
        raise RuntimeError("broken SDK")

    record = add


class _BrokenSDK:
    """A provider, meter and tracer whose every recording call raises."""

    def get_tracer(self, *args, **kwargs):
        return self

    def get_meter(self, *args, **kwargs):
        return self

    def create_counter(self, *args, **kwargs):
        return _BrokenInstrument()

    create_histogram = create_counter

    def create_observable_gauge(self, *args, **kwargs):
        return None

    def start_span(self, *args, **kwargs):
        raise RuntimeError("broken SDK")


def test_a_broken_sdk_never_fails_a_request(registry):
    telemetry.install(_BrokenSDK(), _BrokenSDK())
    svc = make(registry)
    embed_ok(svc, 2)


# -- modes ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("env, expected", [
    ({}, "off"),
    ({"EMBEDDINGS_TELEMETRY": "auto"}, "off"),
    ({"APPLICATIONINSIGHTS_CONNECTION_STRING": "InstrumentationKey=0"}, "azure"),
    ({"APPLICATIONINSIGHTS_CONNECTION_STRING": "InstrumentationKey=0",
      "EMBEDDINGS_TELEMETRY": "off"}, "off"),
    ({"EMBEDDINGS_TELEMETRY": "Console"}, "console"),
    ({"EMBEDDINGS_TELEMETRY": "otlp"}, "otlp"),
    ({"EMBEDDINGS_TELEMETRY": "azure"}, "azure"),
    ({"EMBEDDINGS_TELEMETRY": "prometheus"}, "off"),
])
def test_mode(monkeypatch, env, expected):
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert telemetry.mode() == expected


@pytest.mark.parametrize("value, level, warned", [
    ("", logging.WARNING, False), ("info", logging.INFO, False), ("ERROR", logging.ERROR, False),
    ("verbose", logging.WARNING, True),
])
def test_exported_log_level(monkeypatch, caplog, value, level, warned):
    """An invalid level does not fail requests (telemetry never does), but the log says so."""
    monkeypatch.setenv("EMBEDDINGS_TELEMETRY_LOG_LEVEL", value)
    with caplog.at_level(logging.WARNING, logger=telemetry.log.name):
        assert telemetry.SanitizingHandler(logging.NullHandler()).level == level
    assert any("EMBEDDINGS_TELEMETRY_LOG_LEVEL" in r.getMessage() for r in caplog.records) == warned


def test_an_sdk_the_process_already_has_is_used_not_configured_twice(monkeypatch):
    """What the Functions worker leaves behind with PYTHON_APPLICATIONINSIGHTS_ENABLE_TELEMETRY:
    global SDK providers (configured by the distro before the app was imported)."""
    from opentelemetry import metrics, trace
    monkeypatch.setattr(trace, "get_tracer_provider", lambda: TracerProvider())
    monkeypatch.setattr(metrics, "get_meter_provider", lambda: MeterProvider())
    monkeypatch.setenv("APPLICATIONINSIGHTS_CONNECTION_STRING", "InstrumentationKey=0")
    assert telemetry.mode() == "existing"
    monkeypatch.setenv("EMBEDDINGS_TELEMETRY", "azure")
    assert telemetry.mode() == "existing"
    monkeypatch.setenv("EMBEDDINGS_TELEMETRY", "off")
    assert telemetry.mode() == "off"


def test_the_worker_distros_log_handler_is_wrapped(monkeypatch):
    from opentelemetry.instrumentation.logging.handler import LoggingHandler
    logs = InMemoryLogRecordExporter()
    lp = LoggerProvider()
    lp.add_log_record_processor(SimpleLogRecordProcessor(logs))
    root = logging.getLogger()
    handler = LoggingHandler(logger_provider=lp)
    root.addHandler(handler)                    # as configure_azure_monitor(logger_name="") does
    try:
        telemetry._secure_existing_log_handlers()
        assert handler not in root.handlers
        logging.getLogger("embedding_core.test").error("failed for %s", KEY_A)
        assert [d.log_record.body for d in logs.get_finished_logs()] == ["failed for %s"]
    finally:
        telemetry.reset()
        root.removeHandler(handler)
        lp.shutdown()
    assert handler not in root.handlers


def run_python(code: str, env: dict[str, str]) -> str:
    base = {k: v for k, v in os.environ.items()
            if not k.startswith(("EMBEDDINGS_", "OTEL_", "APPLICATIONINSIGHTS_"))}
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env={**base, **env},
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout.strip().splitlines()[-1]


FUNCTION_CALL = """
import json, sys, function_app, azure.functions as func
fns = {f.get_trigger().route: f.get_user_function() for f in function_app.app.get_functions()}
def embed(text, key):
    return fns['embeddings'](func.HttpRequest('POST', 'http://localhost/embeddings',
        headers={'api-key': key}, params={'api-version': '2024-05-01-preview'},
        body=json.dumps({'input': [text]}).encode()))
"""


def test_off_loads_no_opentelemetry_and_import_never_does():
    code = FUNCTION_CALL + (
        "before = [m for m in sys.modules if m.startswith('opentelemetry')]\n"
        "assert embed('hello', 'local-key-0123456789').status_code == 200\n"
        "after = [m for m in sys.modules if m.startswith('opentelemetry')]\n"
        "print(json.dumps([before, after]))\n")
    assert json.loads(run_python(code, {"EMBEDDINGS_API_KEYS": "local-key-0123456789"})) == [[], []]
    before, _ = json.loads(run_python(code.replace(
        "assert embed('hello', 'local-key-0123456789').status_code == 200\n", ""),
        {"EMBEDDINGS_API_KEYS": "local-key-0123456789", "EMBEDDINGS_TELEMETRY": "console"}))
    assert before == []


# -- console, OTLP and Azure Monitor, end to end --------------------------------------------------

def test_console_mode_sets_up_off_the_request_path_and_keeps_early_requests(registry, capfd,
                                                                           monkeypatch):
    monkeypatch.setenv("EMBEDDINGS_TELEMETRY", "console")
    telemetry.reset()
    svc = make(registry)
    embed_ok(svc, 2)                          # answered while (or before) the exporters start
    res, _ = call(svc, {"input": [TEXT]})
    assert res.status == 200
    telemetry.flush()
    telemetry.reset()
    err = capfd.readouterr().err
    assert err.count('"name": "POST /embeddings"') == 3
    assert '"embeddings.requests"' in err and '"embeddings.tokens"' in err
    assert caller(KEY_A) in err
    assert TEXT not in err and KEY_A not in err


class Collector:
    """A loopback HTTP endpoint that keeps every POSTed body (gunzipped) by path."""

    def __init__(self, answer=lambda path, body: b""):
        self.bodies: list[tuple[str, bytes]] = []
        collector = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                if self.headers.get("Content-Encoding") == "gzip":
                    body = gzip.decompress(body)
                collector.bodies.append((self.path, body))
                reply = answer(self.path, body)
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)

            do_GET = do_POST

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def text(self, prefix: str = "") -> bytes:
        return b"\n".join(b for p, b in self.bodies if p.startswith(prefix))

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@contextmanager
def collector(**kwargs) -> Iterator[Collector]:
    c = Collector(**kwargs)
    try:
        yield c
    finally:
        c.close()


def test_otlp_mode_exports_to_the_configured_collector(registry, monkeypatch):
    with collector() as otlp:
        monkeypatch.setenv("EMBEDDINGS_TELEMETRY", "otlp")
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", otlp.url)
        telemetry.reset()
        svc = make(registry)
        res, _ = call(svc, {"input": [TEXT]})
        assert res.status == 200
        telemetry.flush()
        telemetry.reset()
        traces, metrics = otlp.text("/v1/traces"), otlp.text("/v1/metrics")
        assert b"POST /embeddings" in traces and caller(KEY_A).encode() in traces
        assert b"embeddings.tokens" in metrics and b"embeddings.request.duration" in metrics
        everything = otlp.text()
        for needle in (TEXT, KEY_A, "quokka"):
            assert needle.encode() not in everything


AZURE_CHILD = FUNCTION_CALL + """
# What the Functions Python worker does with PYTHON_APPLICATIONINSIGHTS_ENABLE_TELEMETRY=true,
# before it imports function_app (which this script already did; the app imports no OTel code):
import os
from azure.monitor.opentelemetry import configure_azure_monitor
configure_azure_monitor(logger_name=os.environ['PYTHON_APPLICATIONINSIGHTS_LOGGER_NAME'])
from opentelemetry import context, metrics, trace, _logs
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
# ... and before each invocation (configure_opentelemetry):
context.attach(TraceContextTextMapPropagator().extract({'traceparent': os.environ['TP']}))
text, key = os.environ['CANARY_TEXT'], os.environ['EMBEDDINGS_API_KEYS']
assert embed(text, key).status_code == 200
assert embed(text, 'wrong-' + key).status_code == 401
from embedding_core import service
def fail(self, req, trace):
    raise RuntimeError(f'could not embed {text} for {key}')
service.EmbeddingService.azure_embeddings = fail
assert embed(text, key).status_code == 500
from embedding_core import telemetry
telemetry.flush()                                 # the telemetry thread's queue, into the SDK
for provider in (trace.get_tracer_provider(), metrics.get_meter_provider(),
                 _logs.get_logger_provider()):
    provider.force_flush()
print('flushed')
"""


def run_with_ingestion(code: str, env: dict[str, str], tmp_path) -> tuple[bytes, list[dict]]:
    """Run ``code`` in a child whose Azure Monitor distro exports to a loopback ingestion
    endpoint: what it sent (raw), and the telemetry items in it."""
    def answer(path, body):
        if "track" not in path:
            return b""
        n = len(json.loads(body)) if body.startswith(b"[") else len(body.splitlines())
        return json.dumps({"itemsReceived": n, "itemsAccepted": n, "errors": []}).encode()

    with collector(answer=answer) as ingestion:
        run_python(code, {
            "APPLICATIONINSIGHTS_CONNECTION_STRING":
                "InstrumentationKey=00000000-0000-0000-0000-000000000000;"
                f"IngestionEndpoint={ingestion.url}/;LiveEndpoint={ingestion.url}/",
            "APPLICATIONINSIGHTS_STATSBEAT_DISABLED_ALL": "true",   # no call home
            "APPLICATIONINSIGHTS_CONTROLPLANE_DISABLED": "true",
            "OTEL_EXPERIMENTAL_RESOURCE_DETECTORS": "otel",          # no instance metadata calls
            # The distro's default samples at most 5 spans a second (and may drop a lone one).
            "OTEL_TRACES_SAMPLER": "microsoft.fixed_percentage", "OTEL_TRACES_SAMPLER_ARG": "1.0",
            "TMPDIR": str(tmp_path), **env})
        raw = ingestion.text("/v2.1/track")
    items = []
    for line in raw.splitlines():
        line = line.strip()
        if line:
            parsed = json.loads(line)
            items += parsed if isinstance(parsed, list) else [parsed]
    return raw, items


def test_azure_monitor_as_the_functions_worker_sets_it_up(tmp_path):
    """The distro configured the way the worker configures it, exporting to a loopback
    ingestion endpoint: what lands in which Application Insights table, and no secret."""
    raw, items = run_with_ingestion(AZURE_CHILD, {
        "PYTHON_APPLICATIONINSIGHTS_LOGGER_NAME": "embedding_core",
        "FUNCTIONS_WORKER_RUNTIME": "python",
        "EMBEDDINGS_API_KEYS": KEY_A, "CANARY_TEXT": TEXT, "TP": TRACEPARENT}, tmp_path)
    for needle in (TEXT, KEY_A, "quokka"):
        assert needle.encode() not in raw

    def of(kind):
        return [i for i in items if i["name"] == f"Microsoft.ApplicationInsights.{kind}"]

    # Our span: an InProc dependency (table `dependencies` / AppDependencies) under the host's
    # request; no second `requests` row.
    ours = [d for d in of("RemoteDependency")
            if d["data"]["baseData"]["name"] == "POST /embeddings"]
    assert len(ours) == 3 and not of("Request")
    for d in ours:
        assert d["tags"]["ai.operation.id"] == "0af7651916cd43dd8448eb211c80319c"
        assert d["tags"]["ai.operation.parentId"] == "b7ad6b7169203331"
        assert d["data"]["baseData"]["type"] == "InProc"
    props = [d["data"]["baseData"]["properties"] for d in ours]
    assert props[0]["embeddings.caller"] == caller(KEY_A)
    assert props[0]["faas.coldstart"] == "True" and "faas.coldstart" not in props[1]
    assert props[0]["embeddings.deployment"] == "all-MiniLM-L6-v2"
    assert int(props[0]["embeddings.token.count"]) > 0
    # The exporter files http.* and error.type of an InProc dependency nowhere; the status
    # shows as success (false for 5xx only), the code is in the host's request row.
    assert "http.response.status_code" not in props[0]
    assert [d["data"]["baseData"]["success"] for d in ours] == [True, True, False]

    # Metrics: table `customMetrics` / AppMetrics, every attribute a custom dimension.
    metric_rows = [(m["data"]["baseData"]["metrics"][0], m["data"]["baseData"]["properties"])
                   for m in of("Metric")]
    names = {m["name"] for m, _ in metric_rows}
    assert {"embeddings.requests", "embeddings.tokens", "embeddings.request.duration",
            "embeddings.queue.duration", "embeddings.server_errors"} <= names
    requests = [(p, m["value"]) for m, p in metric_rows if m["name"] == "embeddings.requests"]
    by_status = {}
    for p, v in requests:
        by_status[p["http.response.status_code"]] = by_status.get(
            p["http.response.status_code"], 0) + v
    assert by_status == {"200": 1, "401": 1, "500": 1}
    assert all(p.get("embeddings.caller") == caller(KEY_A)
               for p, _ in requests if p["http.response.status_code"] != "401")

    # The 500's log record: table `exceptions` / AppExceptions, type and frames, no message.
    (exc,) = of("Exception")
    detail = exc["data"]["baseData"]["exceptions"][0]
    assert detail["typeName"] == "builtins.RuntimeError"
    assert detail["message"] == "request %s failed"
    assert exc["tags"]["ai.operation.id"] == "0af7651916cd43dd8448eb211c80319c"


AZURE_UNATTACHED = FUNCTION_CALL + """
# What azure-functions-runtime 1.3.0 (the worker of Python 3.13+) does with
# PYTHON_APPLICATIONINSIGHTS_ENABLE_TELEMETRY=true: the distro configured before function_app is
# imported, the host's trace context attached in its event loop only, and the sync function run
# in a pool thread without it, given the invocation context as its `context` argument.
import os, types
from azure.monitor.opentelemetry import configure_azure_monitor
configure_azure_monitor(logger_name=os.environ['PYTHON_APPLICATIONINSIGHTS_LOGGER_NAME'])
from opentelemetry import trace
context = types.SimpleNamespace(trace_context=types.SimpleNamespace(
    trace_parent=os.environ['TP'], trace_state='', attributes={}))
req = func.HttpRequest('POST', 'http://localhost/embeddings',
    headers={'api-key': os.environ['EMBEDDINGS_API_KEYS']},
    params={'api-version': '2024-05-01-preview'}, body=json.dumps({'input': ['hello']}).encode())
assert fns['embeddings'](req=req, context=context).status_code == 200
from embedding_core import service
def fail(self, req, trace):
    raise RuntimeError('the canary failure')
service.EmbeddingService.azure_embeddings = fail     # its exception log: on the request thread
assert fns['embeddings'](req=req, context=context).status_code == 500
os.environ['EMBEDDINGS_MAX_INPUTS'] = 'many'             # its log: before any request runs
service.reset_service()
assert fns['embeddings'](req=req, context=context).status_code == 500
from embedding_core import telemetry
telemetry.flush()
trace.get_tracer_provider().force_flush()
print('flushed')
"""


def test_azure_monitor_under_a_worker_that_attaches_no_trace_context(tmp_path):
    """The app's spans and its exception log still join the host's request in Application Insights
    (operation id and parent) when the worker leaves the thread without a trace context."""
    _, items = run_with_ingestion(AZURE_UNATTACHED, {
        "PYTHON_APPLICATIONINSIGHTS_LOGGER_NAME": "embedding_core",
        "FUNCTIONS_WORKER_RUNTIME": "python",
        "EMBEDDINGS_API_KEYS": KEY_A, "TP": TRACEPARENT}, tmp_path)
    ours = [i for i in items if i["name"] == "Microsoft.ApplicationInsights.RemoteDependency"
            and i["data"]["baseData"]["name"] == "POST /embeddings"]
    failures = [i for i in items if i["name"] == "Microsoft.ApplicationInsights.Exception"]
    messages = sorted(i["data"]["baseData"]["exceptions"][0]["message"] for i in failures)
    assert messages == ["request %s failed",
                        "service configuration error, invalid setting EMBEDDINGS_MAX_INPUTS "
                        "(answering 500 until it is fixed)"], messages
    assert len(ours) == 3           # the configuration error's 500 has its span too
    for row in (*ours, *failures):
        assert row["tags"]["ai.operation.id"] == "0af7651916cd43dd8448eb211c80319c"
        assert row["tags"]["ai.operation.parentId"] == "b7ad6b7169203331"
    assert not [i for i in items if i["name"] == "Microsoft.ApplicationInsights.Request"]


AZURE_MODE_CHILD = FUNCTION_CALL + """
# EMBEDDINGS_TELEMETRY=azure outside the Functions worker: the app configures the distro itself,
# on its setup thread, after the first request. The distro hooks its log handler, then sets up
# instrumentations (~50 ms) before it returns: a record logged then must not be exported raw.
import logging, os, threading
from azure.monitor.opentelemetry import _configure
from embedding_core import telemetry
text, key = os.environ['CANARY_TEXT'], os.environ['EMBEDDINGS_API_KEYS']
app_log = logging.getLogger('embedding_core.test')
during = _configure._setup_instrumentations
def instrumentations(*args, **kwargs):
    app_log.warning('during setup: %s', text)
    return during(*args, **kwargs)
_configure._setup_instrumentations = instrumentations
assert embed(text, key).status_code == 200
telemetry.flush()                           # waits for the setup thread
app_log.warning('after setup: %s', text)
app_log.info('info is not exported: %s', text)
from opentelemetry import _logs, metrics, trace
for provider in (trace.get_tracer_provider(), metrics.get_meter_provider(),
                 _logs.get_logger_provider()):
    provider.force_flush()
print('flushed')
"""


def test_azure_mode_exports_sanitised_logs_from_its_first_record(tmp_path):
    """``EMBEDDINGS_TELEMETRY=azure`` (or ``auto`` with a connection string) outside the
    Functions worker, exporting to a loopback ingestion endpoint."""
    raw, items = run_with_ingestion(AZURE_MODE_CHILD, {
        "EMBEDDINGS_TELEMETRY": "azure", "EMBEDDINGS_API_KEYS": KEY_A, "CANARY_TEXT": TEXT},
        tmp_path)
    for needle in (TEXT, KEY_A, "quokka"):
        assert needle.encode() not in raw
    messages = [item["data"]["baseData"].get("message") for item in items
                if item["name"] == "Microsoft.ApplicationInsights.Message"]
    assert "after setup: %s" in messages          # the template, without its argument
    assert "info is not exported: %s" not in messages
    assert b"POST /embeddings" in raw              # the request's span was exported too
