"""The local host serves small FunctionApps the way the Functions host would: the most specific
route wins (a catch-all gets what no other route takes, by path or by method), the function sees
the request as a func.HttpRequest with route_params, runs in a worker thread, and its failures
are JSON 500s; without a catch-all, unknown routes are a JSON 404."""

from __future__ import annotations

import http.client
import json
import textwrap
import threading
import time
from urllib.parse import urlsplit

import pytest

from conftest import LiveServer


ROUTED_APP = '''
import asyncio
import json
import threading
import time

import azure.functions as func

app = func.FunctionApp(http_auth_level=func.AuthLevel.ANONYMOUS)


def echo(name, req):
    return func.HttpResponse(json.dumps({
        "function": name, "method": req.method, "url": req.url,
        "route_params": dict(req.route_params), "params": dict(req.params),
        "headers": dict(req.headers), "body": req.get_body().decode("latin-1"),
        "thread": threading.current_thread().name,
    }), status_code=200, mimetype="application/json")


@app.route(route="{*path}")  # every method, registered first
def catch_all(req):
    return echo("catch_all", req)


@app.route(route="v1/embeddings", methods=["POST"])
def v1_embeddings(req):
    return echo("v1_embeddings", req)


@app.route(route="v1/models", methods=["GET"])
def v1_models(req):
    return echo("v1_models", req)


@app.route(route="swagger.json", methods=["GET"])
def swagger(req):
    return echo("swagger", req)


@app.route(route="openapi.json", methods=["GET"])
def openapi(req):
    return echo("openapi", req)


@app.route(route="embeddings", methods=["POST"])
def embeddings(req):
    return echo("embeddings", req)


@app.route(route="items/{id:int}/{part?}", methods=["GET", "DELETE"])
def item(req):
    return echo("item", req)


@app.route(route="slow", methods=["GET"])
def slow(req):
    time.sleep(0.4)
    return echo("slow", req)


@app.route(route="coroutine", methods=["GET"])
async def coroutine(req):
    await asyncio.sleep(0)
    return echo("coroutine", req)


@app.route(route="raises", methods=["GET"])
def raises(req):
    raise RuntimeError("the function failed")


@app.route(route="non-ascii-header", methods=["GET"])
def non_ascii_header(req):
    return func.HttpResponse("x", headers={"x-name": "caf\\u00e9"})


@app.route(route="not-a-response", methods=["GET"])
def not_a_response(req):
    return {"a": 1}


@app.route(route="text", methods=["GET"])
def text(req):
    return func.HttpResponse("plain", headers={"Set-Cookie": "a=1", "X-Dup": "1"})
'''

NO_CATCH_ALL_APP = '''
import azure.functions as func

app = func.FunctionApp(http_auth_level=func.AuthLevel.ANONYMOUS)


@app.route(route="embeddings", methods=["POST"])
def embeddings(req):
    return func.HttpResponse("{}", mimetype="application/json")
'''


HOST_JSON = '{"version": "2.0", "extensions": {"http": {"routePrefix": ""}}}'


def serve_app(tmp_path_factory, source: str, env: dict[str, str] | None = None,
              host_json: str | None = HOST_JSON) -> LiveServer:
    app_dir = tmp_path_factory.mktemp("app")
    (app_dir / "function_app.py").write_text(textwrap.dedent(source), encoding="utf-8")
    if host_json is not None:
        (app_dir / "host.json").write_text(host_json, encoding="utf-8")
    return LiveServer(env or {}, app_dir=app_dir)


@pytest.fixture(scope="module")
def routed(tmp_path_factory):
    server = serve_app(tmp_path_factory, ROUTED_APP)
    yield server
    server.stop()


def call(server, method, path, body=None, headers=None, timeout=10):
    u = urlsplit(server.url)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=timeout)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        res = conn.getresponse()
        data = res.read()
        return res.status, {k.lower(): v for k, v in res.getheaders()}, data
    finally:
        conn.close()


@pytest.mark.parametrize("method, path, function, route_params", [
    ("POST", "/v1/embeddings", "v1_embeddings", {}),
    ("GET", "/v1/models", "v1_models", {}),
    ("GET", "/V1/MODELS", "v1_models", {}),
    ("GET", "/swagger.json", "swagger", {}),
    ("GET", "/openapi.json", "openapi", {}),
    ("POST", "/embeddings", "embeddings", {}),
    ("GET", "/embeddings", "catch_all", {"path": "embeddings"}),
    ("PUT", "/v1/embeddings", "catch_all", {"path": "v1/embeddings"}),
    ("GET", "/v1/nothing", "catch_all", {"path": "v1/nothing"}),
    ("GET", "/", "catch_all", {}),
    ("OPTIONS", "/swagger.json", "catch_all", {"path": "swagger.json"}),
    ("GET", "/items/12", "item", {"id": "12"}),
    ("DELETE", "/items/12/wheels", "item", {"id": "12", "part": "wheels"}),
    ("GET", "/items/twelve", "catch_all", {"path": "items/twelve"}),
])
def test_requests_reach_the_most_specific_function(routed, method, path, function, route_params):
    status, headers, data = call(routed, method, path, body=b"{}" if method in ("POST", "PUT") else None)
    assert status == 200, data
    doc = json.loads(data)
    assert doc["function"] == function
    assert doc["route_params"] == route_params
    assert doc["method"] == method


def test_the_request_the_function_sees(routed):
    u = urlsplit(routed.url)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=10)
    conn.putrequest("POST", "/v1/embeddings?api-version=1&x=a%20b&empty=&x=c")
    for name, value in (("Content-Type", "application/json"), ("X-Custom", "yes"),
                        ("X-Twice", "1"), ("x-twice", "2"), ("Content-Length", "14")):
        conn.putheader(name, value)
    conn.endheaders(b'{"input": "x"}')
    res = conn.getresponse()
    status, data = res.status, res.read()
    conn.close()
    doc = json.loads(data)
    assert status == 200
    assert doc["url"] == f"{routed.url}/v1/embeddings?api-version=1&x=a%20b&empty=&x=c"
    # repeated names arrive once, joined with "," as the Functions host sends them
    assert doc["params"] == {"api-version": "1", "x": "a b,c", "empty": ""}
    assert doc["headers"]["x-twice"] == "1,2"
    assert doc["headers"]["x-custom"] == "yes" and doc["headers"]["content-type"] == "application/json"
    assert doc["body"] == '{"input": "x"}'
    assert doc["thread"].startswith("function")  # a worker thread, not the event loop


def test_sync_functions_run_in_a_thread_pool_and_async_ones_on_the_loop(routed):
    results = []

    def one():
        results.append(call(routed, "GET", "/slow"))

    threads = [threading.Thread(target=one) for _ in range(4)]
    t0 = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    elapsed = time.monotonic() - t0
    assert [r[0] for r in results] == [200] * 4
    assert elapsed < 1.5, f"4 requests of 0.4 s took {elapsed:.2f} s: not concurrent"
    assert len({json.loads(r[2])["thread"] for r in results}) == 4
    status, _, data = call(routed, "GET", "/coroutine")
    assert status == 200 and json.loads(data)["function"] == "coroutine"


def test_response_headers_as_the_python_worker_sends_them(routed):
    status, headers, data = call(routed, "GET", "/text")
    assert status == 200 and data == b"plain"
    assert headers["content-type"] == "text/plain; charset=utf-8"  # from the default mimetype
    assert headers["set-cookie"] == "a=1" and headers["x-dup"] == "1"


@pytest.mark.parametrize("path", ["/raises", "/non-ascii-header", "/not-a-response"])
def test_a_failing_function_is_a_json_500_and_the_connection_survives(routed, path):
    u = urlsplit(routed.url)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=10)
    try:
        conn.request("GET", path)
        res = conn.getresponse()
        body = json.loads(res.read())
        assert res.status == 500 and res.getheader("content-type") == "application/json"
        assert body["error"]["code"] == "InternalServerError"
        assert "Traceback" not in json.dumps(body)
        conn.request("GET", "/v1/models")  # same connection
        res = conn.getresponse()
        assert res.status == 200 and json.loads(res.read())["function"] == "v1_models"
    finally:
        conn.close()


@pytest.fixture(scope="module")
def unrouted(tmp_path_factory):
    server = serve_app(tmp_path_factory, NO_CATCH_ALL_APP)
    yield server
    server.stop()


@pytest.mark.parametrize("method, path", [
    ("GET", "/embeddings"),  # the route exists, not for this method
    ("GET", "/nothing"),
    ("POST", "/embeddings/more"),
    ("GET", "/"),
])
def test_without_a_catch_all_unknown_routes_are_a_json_404(unrouted, method, path):
    body = b"{}" * 2048 if method == "POST" else None
    status, headers, data = call(unrouted, method, path, body=body)
    assert status == 404
    # Answered before its body was read: the connection closes (its body would otherwise be
    # read with no time-out, for no one); without a body it is kept.
    assert headers.get("connection") == ("close" if body else None), headers
    assert headers["content-type"] == "application/json" and headers["x-ms-error-code"] == "NotFound"
    assert json.loads(data)["error"]["code"] == "NotFound"
    assert call(unrouted, "POST", "/embeddings", body=b"{}")[0] == 200


@pytest.mark.parametrize("host_json", [None, '{"extensions": {"http": {"routePrefix": "/api/"}}}'])
def test_routes_are_under_host_json_route_prefix_api_by_default(tmp_path_factory, host_json):
    server = serve_app(tmp_path_factory, NO_CATCH_ALL_APP, host_json=host_json)
    try:
        assert call(server, "POST", "/api/embeddings", body=b"{}")[0] == 200
        assert call(server, "POST", "/embeddings", body=b"{}")[0] == 404
    finally:
        server.stop()


def test_the_serving_line_comes_first_even_at_debug_level(tmp_path_factory):
    """LiveServer and the bench read the port from the first line of output."""
    server = serve_app(tmp_path_factory, NO_CATCH_ALL_APP, {"LOG_LEVEL": "DEBUG"})
    try:
        assert call(server, "POST", "/embeddings", body=b"{}")[0] == 200
    finally:
        server.stop()
    assert "mapped embeddings [POST] to embeddings" in server.output()
