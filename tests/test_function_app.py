"""The functions registered in function_app.py, called with func.HttpRequest as the Functions
host calls them."""

from __future__ import annotations

import functools
import json
import re

import azure.functions as func
import numpy as np
import pytest

import function_app
from conftest import API_VERSION, KEY, process_service
from embedding_core import service as service_module


@pytest.fixture(autouse=True)
def env(monkeypatch):
    with process_service(monkeypatch):
        yield


@functools.cache
def functions():
    """Route -> (methods, user function). get_functions() may be called once per app."""
    out = {}
    for fn in function_app.app.get_functions():
        trigger = fn.get_trigger()
        assert json.loads(fn.get_function_json())["bindings"][0]["authLevel"] == "ANONYMOUS"
        out[trigger.route] = ([m.value if hasattr(m, "value") else str(m) for m in trigger.methods],
                              fn.get_user_function())
    return out


def call(route, method="POST", body=None, headers=None, params=None):
    methods, user_fn = functions()[route]
    assert method in methods
    req = func.HttpRequest(method=method, url=f"http://localhost/{route}",
                           headers=headers or {}, params=params if params is not None else
                           {"api-version": API_VERSION},
                           body=json.dumps(body).encode() if body is not None else b"")
    return user_fn(req)


def test_routes_and_methods_are_registered():
    """Every route the core serves is registered with its methods, plus the catch-all."""
    f = functions()
    expected = {r.template: list(r.methods) for r in service_module.ROUTES.values()}
    expected[service_module.CATCH_ALL] = function_app.ALL_METHODS
    assert {k: v[0] for k, v in f.items()} == expected
    assert {"embeddings", "images/embeddings", "info", "health", "v1/embeddings", "v1/models",
            "swagger.json", "openapi.json"} <= set(f)


def test_embeddings_function_returns_real_vectors(text_backend):
    res = call("embeddings", body={"input": ["hello world", "goodbye"]},
               headers={"api-key": KEY, "x-ms-client-request-id": "abc-123"})
    assert res.status_code == 200 and res.mimetype == "application/json"
    doc = json.loads(res.get_body())
    assert [d["index"] for d in doc["data"]] == [0, 1]
    expected = text_backend.encode(["hello world", "goodbye"]).vectors
    got = np.asarray([d["embedding"] for d in doc["data"]], dtype=np.float32)
    assert np.abs(got - expected).max() < 1e-6
    assert doc["usage"] == {"prompt_tokens": 7, "total_tokens": 7}
    assert res.headers["x-ms-client-request-id"] == "abc-123"
    assert res.headers["x-request-id"] == doc["id"]


def test_errors_come_back_as_azure_errors():
    res = call("embeddings", body={"input": []}, headers={"api-key": KEY})
    assert res.status_code == 422 and res.headers["x-ms-error-code"] == "InvalidParameter"
    assert json.loads(res.get_body())["error"]["target"] == "input"
    res = call("embeddings", body={"input": ["a"]}, headers={})
    assert res.status_code == 401 and res.headers["WWW-Authenticate"] == "Bearer"


@pytest.mark.parametrize("route, params", [("embeddings", None), ("v1/embeddings", {})])
def test_a_chunked_body_that_reaches_the_function_empty_is_explained(route, params):
    """azure-functions-host hands the worker a body only when the request has a Content-Length;
    a client that streamed its body (Transfer-Encoding: chunked) would otherwise be told it sent
    none."""
    headers = {"api-key": KEY, "content-type": "application/json",
               "transfer-encoding": "chunked"}
    res = call(route, headers=headers, params=params)     # as the host passes it: no body
    message = json.loads(res.get_body())["error"]["message"]
    assert res.status_code == 400 and message.startswith("The request body is empty")
    assert "'Transfer-Encoding: chunked'" in message and "Content-Length" in message
    res = call(route, headers={**headers, "transfer-encoding": "identity"}, params=params)
    assert json.loads(res.get_body())["error"]["message"] == (
        "The request body is empty; send a JSON object.")
    res = call(route, body={"input": ["hello"]}, headers=headers, params=params)
    assert res.status_code == 200     # a chunked body that did arrive is served as any other


def test_info_and_health():
    res = call("info", method="GET", headers={"Authorization": f"Bearer {KEY}"})
    assert json.loads(res.get_body()) == {"model_name": "all-MiniLM-L6-v2",
                                          "model_type": "embeddings",
                                          "model_provider_name": "sentence-transformers"}
    res = call("health", method="GET", params={})
    doc = json.loads(res.get_body())
    assert doc["status"] == "ok"
    assert {"name": "all-MiniLM-L6-v2", "modality": "text", "dimensions": 384,
            "loaded": False, "failed": False} in doc["deployments"]


def test_bad_settings_give_a_500_naming_only_the_request_id(monkeypatch, caplog):
    monkeypatch.setenv("EMBEDDINGS_MAX_INPUTS", "lots")
    res = call("embeddings", body={"input": ["a"]}, headers={"api-key": KEY})
    assert res.status_code == 500
    err = json.loads(res.get_body())["error"]
    assert err["code"] == "InternalServerError" and res.headers["x-request-id"] in err["message"]
    assert "EMBEDDINGS_MAX_INPUTS" in caplog.text  # the operator sees why in the log


def test_unexpected_failure_is_a_500_without_details(monkeypatch):
    svc = service_module.get_service()
    backend = svc.registry.backend(svc.registry.default_for("text"))
    monkeypatch.setattr(backend, "prepare", lambda *a, **k: 1 / 0)
    res = call("embeddings", body={"input": ["a"]}, headers={"api-key": KEY})
    body = res.get_body().decode()
    assert res.status_code == 500 and "ZeroDivision" not in body and "Traceback" not in body


def test_calls_from_a_thread_pool_share_one_queue(text_backend):
    """The Functions Python worker runs sync functions in a thread pool: requests from its
    threads are batched together by one worker thread and get the vectors they get alone."""
    from concurrent.futures import ThreadPoolExecutor

    texts = [f"request {i}: " + "words " * (i % 9) for i in range(32)]
    with ThreadPoolExecutor(max_workers=8) as pool:
        results = list(pool.map(lambda t: call("embeddings", body={"input": [t]},
                                               headers={"api-key": KEY}), texts))
    expected = text_backend.encode(texts).vectors
    for res, want in zip(results, expected):
        assert res.status_code == 200
        got = np.asarray(json.loads(res.get_body())["data"][0]["embedding"], dtype=np.float32)
        assert np.abs(got - want).max() <= 1e-5
    svc = service_module.get_service()
    assert svc.queue.stats().batches < len(texts)      # some requests shared a batch


def test_a_forgotten_service_stops_its_inference_workers():
    """reset_service() (tests change the environment between cases) stops the service's workers:
    idle workers left behind keep their service, its models among it, for the rest of the
    process (114 tests left 20 workers and 120 MiB more RSS)."""
    assert call("embeddings", body={"input": ["one"]}, headers={"api-key": KEY}).status_code == 200
    queue = service_module.get_service().queue
    assert queue.stats().worker_alive
    service_module.reset_service()
    assert not queue.stats().worker_alive
    # The next request builds a new service, whose workers start on its first embedding.
    assert call("embeddings", body={"input": ["two"]}, headers={"api-key": KEY}).status_code == 200
    assert service_module.get_service().queue.stats().worker_alive


def test_the_worker_starts_on_the_first_embedding_never_at_import():
    import subprocess
    import sys

    code = """
import json, threading
import azure.functions as func
import function_app
workers = lambda: sum(t.name.startswith("inference-worker") for t in threading.enumerate())
fns = {f.get_trigger().route: f.get_user_function() for f in function_app.app.get_functions()}
def call(route, method, body=b""):
    return fns[route](func.HttpRequest(method=method, url="http://localhost/" + route,
        headers={"api-key": "test-key-0123456789"}, params={"api-version": "2024-05-01-preview"},
        body=body))
out = [workers()]
assert call("health", "GET").status_code == 200
out.append(workers())
assert call("embeddings", "POST", json.dumps({"input": ["hi"]}).encode()).status_code == 200
assert call("embeddings", "POST", json.dumps({"input": ["again"]}).encode()).status_code == 200
out.append(workers())
from embedding_core.settings import usable_cores
print(json.dumps([out, usable_cores()]))
"""
    env = {k: v for k, v in __import__("os").environ.items() if not k.startswith("EMBEDDINGS_")}
    env["EMBEDDINGS_API_KEYS"] = KEY
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120, cwd=str(__import__("conftest").ROOT), env=env)
    assert proc.returncode == 0, proc.stderr
    out, cores = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out == [0, 0, cores]                     # one inference worker per core


def call_url(fn_route, method, url, body=b"", headers=None):
    """Call the function registered for ``fn_route`` as the host would for ``url``."""
    _, user_fn = functions()[fn_route]
    return user_fn(func.HttpRequest(method=method, url=url, headers=headers or {}, params={},
                                    body=body))


@pytest.mark.parametrize("method, path, status, dialect, allow", [
    ("GET", "/embeddings", 405, "azure", "POST"),
    ("PUT", "/images/embeddings", 405, "azure", "POST"),
    ("POST", "/info", 405, "azure", "GET, HEAD"),
    ("DELETE", "/health", 405, "azure", "GET, HEAD"),
    ("HEAD", "/embeddings", 405, "azure", "POST"),
    ("GET", "/nothing/here", 404, "azure", None),
    ("POST", "/embedding", 404, "azure", None),
    ("GET", "/", 404, "azure", None),
    ("GET", "/v1/embeddings", 405, "openai", "POST"),
    ("POST", "/v1/models", 405, "openai", "GET, HEAD"),
    ("GET", "/v1/nope", 404, "openai", None),
    ("GET", "/openai/deployments/minilm/embeddings", 405, "openai", "POST"),
    ("POST", "/openai/deployments/minilm/chat/completions", 404, "openai", None),
])
def test_unserved_routes_and_methods_answer_in_the_routes_dialect(method, path, status, dialect,
                                                                   allow):
    res = call_url("{*path}", method, "http://localhost" + path)
    assert res.status_code == status and res.mimetype == "application/json"
    err = json.loads(res.get_body())["error"]
    if dialect == "azure":
        assert res.headers["x-ms-error-code"] == err["code"] == \
            ("MethodNotAllowed" if status == 405 else "NotFound")
        assert path in err["message"] or path == "/"
    else:
        assert set(err) == {"message", "type", "param", "code"}
        assert err["type"] == "invalid_request_error"
        assert err["code"] == ("method_not_allowed" if status == 405 else "not_found")
    assert res.headers.get("Allow") == allow


@pytest.mark.parametrize("route", ["health", "swagger.json", "openapi.json"])
def test_head_reaches_the_get_function_and_answers_what_get_does(route):
    """The Functions host routes HEAD to a function that lists it; the function answers GET's
    status, headers and body, and the host's HTTP server (Kestrel) drops the body of a HEAD
    response."""
    methods, _ = functions()[route]
    assert methods == ["GET", "HEAD"]
    get = call_url(route, "GET", "http://localhost/" + route)
    head = call_url(route, "HEAD", "http://localhost/" + route)
    assert head.status_code == get.status_code == 200
    assert head.get_body() == get.get_body() and head.mimetype == "application/json"


def test_client_request_id_echo_is_sanitised():
    from embedding_core.errors import safe_client_request_id as safe

    assert safe("abc-123_X.y:{z}") == "abc-123_X.y:{z}"
    assert safe("abc\r\n  def") == "abcdef"
    assert safe("a" * 1000) == "a" * 128
    assert safe("\r\n\x00") is None and safe("") is None and safe(None) is None
    res = call("embeddings", body={"input": ["a"]},
               headers={"api-key": KEY, "x-ms-client-request-id": "id\r\nSet-Cookie: x=1"})
    assert res.headers["x-ms-client-request-id"] == "idSet-Cookie:x1"


def test_a_bad_setting_is_a_500_with_one_traceback_not_one_per_request(monkeypatch, caplog):
    import logging

    monkeypatch.setenv("EMBEDDINGS_MAX_INPUTS", "many")
    with caplog.at_level(logging.ERROR, logger="embedding_core"):
        statuses = [call("embeddings", body={"input": ["a"]}, headers={"api-key": KEY}).status_code
                    for _ in range(3)]
    assert statuses == [500, 500, 500]
    # One record a minute, not one per request (a retrying client multiplied them).
    errors = [r for r in caplog.records if "configuration error" in r.getMessage()]
    assert len(errors) == 1 and errors[0].exc_info is not None
    assert "invalid setting EMBEDDINGS_MAX_INPUTS" in errors[0].getMessage()
    assert "must be an integer, got 'many'" in str(errors[0].exc_info[1])   # the traceback's


def test_settings_warnings_are_logged_once_while_the_service_cannot_be_built(monkeypatch,
                                                                         caplog):
    """While the service cannot be built the settings are read again at every request; their
    warnings were a log row per call, though the configuration error itself is logged once a
    minute (second look at the diff, F10)."""
    import logging

    monkeypatch.setenv("EMBEDDINGS_REQUEST_TIMEOUT_SECONDS", "300")
    monkeypatch.setenv("EMBEDDINGS_REGISTRY", "/nonexistent/registry.json")
    with caplog.at_level(logging.WARNING, logger="embedding_core"):
        statuses = [call("embeddings", body={"input": ["a"]}, headers={"api-key": KEY}).status_code
                    for _ in range(3)]
    assert statuses == [500, 500, 500]
    messages = [r.getMessage() for r in caplog.records]
    assert sum("front-end limit" in m for m in messages) == 1, messages
    assert sum("unreadable registry" in m for m in messages) == 1, messages


def test_the_process_exits_cleanly_while_a_batch_is_running():
    """The worker is a daemon thread inside ONNX Runtime: at interpreter exit it is stopped and
    joined after its batch (killed mid-run, the process aborts with SIGABRT)."""
    import subprocess
    import sys

    code = """
import json, sys, threading, time
from embedding_core.service import EmbeddingService
from embedding_core.api import ApiRequest
svc = EmbeddingService.from_env()
text = "lorem ipsum dolor sit amet consectetur adipiscing elit " * 40
body = json.dumps({"input": [f"{i} {text}" for i in range(200)], "truncate": "END"}).encode()
req = ApiRequest("POST", "/embeddings", {"api-key": "test-key-0123456789",
                 "extra-parameters": "pass-through"}, {"api-version": "2024-05-01-preview"}, body)
threading.Thread(target=svc.embeddings, args=(req,), daemon=True).start()
while svc.queue.stats().batches < 2:
    time.sleep(0.005)
print("exiting mid-run", flush=True)
sys.exit(0)
"""
    env = {k: v for k, v in __import__("os").environ.items() if not k.startswith("EMBEDDINGS_")}
    env["EMBEDDINGS_API_KEYS"] = KEY
    for _ in range(3):
        proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                              timeout=120, cwd=str(__import__("conftest").ROOT), env=env)
        assert proc.returncode == 0, (proc.returncode, proc.stderr[-2000:])
        assert "exiting mid-run" in proc.stdout


UNLOADABLE = """
import json, sys
sys.path.insert(0, sys.argv[1])       # packages there shadow the installed ones
if len(sys.argv) > 2:
    sys.modules[sys.argv[2]] = None   # this module's import fails
import function_app, azure.functions as func
fns = {f.get_trigger().route: f.get_user_function() for f in function_app.app.get_functions()}
out = []
for route, path, method in (("health", "health", "GET"), ("embeddings", "embeddings", "POST"),
                            ("v1/embeddings", "v1/embeddings", "POST"),
                            ("{*path}", "openai/v1/nothing", "GET"),
                            ("{*path}", "%76%31/nothing", "GET")):   # /v1/nothing, as api.py reads it
    try:
        res = fns[route](func.HttpRequest(method, "http://localhost/" + path,
                                          body=b'{"input": ["x"]}', headers={"api-key": "k" * 20,
                                                                "x-ms-client-request-id": "c-1 <2>"}))
    except ImportError as exc:
        out.append(["raised", type(exc).__name__, exc.name])
        continue
    out.append([res.status_code, dict(res.headers), json.loads(res.get_body())])
print(json.dumps(out))
"""


def _run_unloadable(shadow, *failing: str) -> list:
    import subprocess
    import sys
    proc = subprocess.run([sys.executable, "-c", UNLOADABLE, str(shadow), *failing],
                          capture_output=True, text=True, timeout=120,
                          cwd=function_app.__file__.rsplit("/", 1)[0])
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_packages_built_for_another_python_answer_503_saying_so(tmp_path):
    """A deployment whose build ran another Python (or whose Python version changed, the code not
    yet deployed again): its compiled extensions do not load, and the first symptom would be an
    invocation failure without a body ("No module named 'orjson.orjson'"). Every request,
    /health included, gets a 503 naming the two versions. Here orjson built for a "Python 3.99"
    shadows the installed one, as a 3.11 build's does on 3.12."""
    import sys
    pkg = tmp_path / "orjson"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("from .orjson import *\n")
    (pkg / "orjson.cpython-399-x86_64-linux-gnu.so").write_bytes(b"\x7fELF")
    running = f"{sys.version_info.major}.{sys.version_info.minor}"
    answers = _run_unloadable(tmp_path)
    assert len(answers) == 5
    for i, (status, headers, body) in enumerate(answers):
        assert status == 503
        assert headers["X-Content-Type-Options"] == "nosniff"
        assert headers["x-should-retry"] == "false"      # a redeployment fixes it, not a retry
        assert "Retry-After" not in headers               # (the OpenAPI document's 503 says so)
        assert float(headers["x-total-time"]) >= 0        # as on every other answer
        assert headers["x-ms-error-code"] == "ServiceUnavailable"
        assert re.fullmatch(r"[0-9a-f]{32}", headers["x-request-id"])
        assert headers["x-ms-client-request-id"] == "c-12"        # echoed as every answer does
        # the Azure routes' error shape, and OpenAI's under /v1 and /openai (the SDK's
        # APIStatusError reads its message, type and code)
        assert body["error"]["code"] == ("ServiceUnavailable" if i < 2 else
                                         "service_unavailable")
        assert (body["error"].get("type"), "param" in body["error"]) == (
            (None, False) if i < 2 else ("server_error", True))
        assert body["error"]["message"] == (
            "The app cannot load its packages: its packages were built for Python 3.99, and it "
            f"runs on Python {running} (module 'orjson.orjson' did not load). Deploy the code "
            "again, so that the build runs the app's Python version (docs/deploy.md, "
            '"Python version").')


def test_the_packages_503_has_every_header_the_openapi_document_requires(tmp_path):
    """Clients and gateways generated from /openapi.json check a 503's required headers: the
    unloadable-packages answer (any route; no Retry-After: waiting does not help) must be
    documented on every operation, authentication on or off, and conform."""
    from conftest import make_service
    from embedding_core.service import ApiRequest

    pkg = tmp_path / "orjson"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("raise ImportError('broken')\n")
    answers = _run_unloadable(tmp_path)
    assert [a[0] for a in answers] == [503] * 5
    for env in ({}, {"EMBEDDINGS_AUTH": "disabled"}):
        doc = make_service(**env).handle("openapi.json",
                                         ApiRequest("GET", "/openapi.json", {})).json()
        components = doc["components"]["headers"]
        assert components["RetryAfter"]["required"] is True       # 429's: always sent
        for path, ops in doc["paths"].items():
            for method, op in ops.items():
                declared = op["responses"]["503"]["headers"]       # KeyError: undocumented
                need = {name for name, h in declared.items()
                        if components.get(h.get("$ref", "").rsplit("/", 1)[-1], h).get("required")}
                assert "x-total-time" in need and "Retry-After" not in need, (path, method)
                for _, headers, _ in answers:
                    assert need <= set(headers), (path, method, need - set(headers))


def test_a_broken_package_answers_503_saying_so_without_its_error_text(tmp_path):
    """The exception's own text (which may hold the server's paths) goes to the log only."""
    pkg = tmp_path / "orjson"
    pkg.mkdir()
    (pkg / "__init__.py").write_text(
        "raise ImportError('/srv/secret/path/libfoo.so: cannot open shared object')\n")
    for status, _, body in _run_unloadable(tmp_path):
        assert status == 503
        assert "a package is missing or broken" in body["error"]["message"]
        assert "secret" not in body["error"]["message"]


def test_an_import_error_in_the_apps_own_modules_is_not_called_a_deployment_problem(tmp_path):
    """A bug in embedding_core (a module of its own that does not import) fails the invocation
    as before, for the worker to log with its traceback, instead of a 503 blaming the build."""
    for outcome in _run_unloadable(tmp_path, "embedding_core.pipeline"):
        assert outcome == ["raised", "ModuleNotFoundError", "embedding_core.pipeline"]


@pytest.mark.parametrize("url, allow", [("http://localhost/%65mbeddings", "POST"),
                                        ("http://localhost/v1/m%6Fdels", "GET, HEAD")])
def test_the_catch_all_reads_the_path_percent_decoded_as_the_host_routed_it(url, allow):
    """The host matched the decoded path (``/%65mbeddings`` is ``/embeddings``) and, the method
    not being the route's, gave it to the catch-all: the answer is that route's 405 with its
    Allow header, not a 404 for a path the host itself served."""
    res = call_url("{*path}", "DELETE", url)
    assert res.status_code == 405, res.get_body()
    assert res.headers.get("Allow") == allow
    assert json.loads(res.get_body())["error"]


def test_route_values_reach_the_app_as_the_host_gives_them():
    """The host keeps a route value's encoded '/' (%2F) encoded, and the app reads the
    deployment from the route values: AzureOpenAI(...).embeddings.create(model="sentence-
    transformers/all-MiniLM-L6-v2") is served, and Azure OpenAI's v1 models.retrieve answers
    the model, not the list."""
    name = "sentence-transformers%2Fall-MiniLM-L6-v2"
    _, embed = functions()["openai/deployments/{deployment}/embeddings"]
    res = embed(func.HttpRequest(
        "POST", f"http://localhost/openai/deployments/{name}/embeddings",
        headers={"api-key": KEY}, params={"api-version": "2024-10-21"},
        route_params={"deployment": name}, body=json.dumps({"input": ["hello"]}).encode()))
    assert res.status_code == 200, res.get_body()
    assert json.loads(res.get_body())["model"] == "all-MiniLM-L6-v2"
    _, retrieve = functions()["openai/v1/models/{model}"]
    res = retrieve(func.HttpRequest(
        "GET", f"http://localhost/openai/v1/models/{name}", headers={"api-key": KEY},
        params={}, route_params={"model": name}, body=b""))
    assert res.status_code == 200, res.get_body()
    assert json.loads(res.get_body())["id"] == "all-MiniLM-L6-v2"


def test_without_route_values_the_path_is_read_as_the_host_decodes_it():
    """A host that passes no route values leaves the app to read the name from the URL's path,
    which it decodes as the host does: every escape but %2F, so that
    "sentence-transformers%2Fall-MiniLM-L6-v2" stays one name, not "all-MiniLM-L6-v2" alone
    (the last segment) or "sentence-transformers" (the third)."""
    name = "sentence-transformers%2Fall-MiniLM-L6-v2"
    _, embed = functions()["openai/deployments/{deployment}/embeddings"]
    res = embed(func.HttpRequest(
        "POST", f"http://localhost/openai/deployments/{name}/embeddings",
        headers={"api-key": KEY}, params={"api-version": "2024-10-21"},
        route_params={}, body=json.dumps({"input": ["hello"]}).encode()))
    assert res.status_code == 200, res.get_body()
    assert json.loads(res.get_body())["model"] == "all-MiniLM-L6-v2"
    _, retrieve = functions()["openai/v1/models/{model}"]
    for path in (f"openai/v1/models/{name}", "openai/v1/models/all-MiniLM-L6-v2",
                 "openai/v1/models/all-%4DiniLM-L6-v2"):
        res = retrieve(func.HttpRequest("GET", f"http://localhost/{path}",
                                        headers={"api-key": KEY}, params={}, route_params={},
                                        body=b""))
        assert res.status_code == 200, (path, res.get_body())
        assert json.loads(res.get_body())["id"] == "all-MiniLM-L6-v2"
    res = retrieve(func.HttpRequest("GET", "http://localhost/openai/v1/models/other%2Fall-MiniLM-L6-v2",
                                    headers={"api-key": KEY}, params={}, route_params={}, body=b""))
    assert res.status_code == 404 and "other/all-MiniLM-L6-v2" in res.get_body().decode()


def test_an_unloadable_build_answers_503_in_the_openai_shape_whatever_the_case_and_logs_once(
        monkeypatch, caplog):
    """Built for another Python, even a module of the app's own that fails to import is the
    build's fault: 503, not an invocation failure. /V1 and /OpenAI are the OpenAI routes (the
    host matches paths case-blind), so their 503 is OpenAI's error shape. The cause is logged
    once per process, not at every request."""
    import sys

    from embedding_core import entry

    monkeypatch.setitem(sys.modules, "embedding_core.service", None)   # its import fails
    monkeypatch.setattr(entry, "built_for", lambda: ["3.99"])
    monkeypatch.setattr(entry, "_logged", False)
    for path in ("/V1/nothing", "/OpenAI/deployments/x/chat", "/v1/models/x"):
        status, headers, body = entry.serve("{*path}", "GET", "http://localhost" + path,
                                            {}, {}, b"", {})
        assert status == 503
        assert headers["Cache-Control"] == "no-store"     # as on every other answer
        err = json.loads(body)["error"]
        assert (err["code"], err["type"]) == ("service_unavailable", "server_error"), path
        assert "built for Python 3.99" in err["message"]
    logged = [r for r in caplog.records if "cannot load its packages" in r.getMessage()]
    assert len(logged) == 1


def test_the_pythons_a_build_was_made_for_are_in_version_order(tmp_path, monkeypatch):
    """The 503 names them in this order ("3.9 and 3.11"): numerically, not as strings."""
    from embedding_core import entry

    for version in ("311", "39", "312"):
        pkg = tmp_path / f"site{version}" / "orjson"
        pkg.mkdir(parents=True)
        (pkg / f"orjson.cpython-{version}-x86_64-linux-gnu.so").write_bytes(b"\x7fELF")
    monkeypatch.setattr("sys.path", [str(tmp_path / f"site{v}") for v in ("311", "39", "312")])
    assert entry.built_for() == ["3.9", "3.11", "3.12"]
