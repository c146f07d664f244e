"""Routes and methods the app does not serve, over real HTTP: 404 / 405 in the path's dialect
(Azure.Core's error with ``x-ms-error-code``; OpenAI's shape under ``/v1`` and ``/openai``), 405
with an ``Allow`` header; and the Azure OpenAI path, a route template.

The local host dispatches Functions route templates (``{name}``, ``{*path}``, the most specific
route winning) as the Functions host does. The same answers at function level are in
tests/test_function_app.py.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from conftest import KEY
from test_http_errors import AUTH, Q, request

UNSERVED = [
    # method, path, status, dialect, Allow
    ("GET", "/embeddings" + Q, 405, "azure", "POST"),
    ("PUT", "/images/embeddings" + Q, 405, "azure", "POST"),
    ("DELETE", "/images/embeddings", 405, "azure", "POST"),
    ("POST", "/info" + Q, 405, "azure", "GET, HEAD"),
    ("DELETE", "/health", 405, "azure", "GET, HEAD"),
    ("OPTIONS", "/embeddings", 405, "azure", "POST"),
    ("HEAD", "/embeddings" + Q, 405, "azure", "POST"),
    ("HEAD", "/v1/embeddings", 405, "openai", "POST"),
    ("POST", "/swagger.json", 405, "azure", "GET, HEAD"),
    ("PATCH", "/openapi.json", 405, "azure", "GET, HEAD"),
    ("GET", "/", 404, "azure", None),
    ("GET", "/nothing/here", 404, "azure", None),
    ("POST", "/embedding" + Q, 404, "azure", None),
    ("POST", "/chat/completions" + Q, 404, "azure", None),
    ("GET", "/images", 404, "azure", None),
    ("GET", "/v1/embeddings", 405, "openai", "POST"),
    ("PUT", "/v1/embeddings", 405, "openai", "POST"),
    ("POST", "/v1/models", 405, "openai", "GET, HEAD"),
    ("GET", "/v1", 404, "openai", None),
    ("GET", "/v1/nope", 404, "openai", None),
    ("POST", "//embeddings" + Q, 404, "azure", None),       # the host's catch-all gets it
    ("POST", "/v1//embeddings", 404, "openai", None),
    ("GET", "//health", 404, "azure", None),
    ("POST", "/v1/chat/completions", 404, "openai", None),
    ("GET", "/v1/models/all-MiniLM-L6-v2/more", 404, "openai", None),
    ("POST", "/v1/models/all-MiniLM-L6-v2", 405, "openai", "GET, HEAD"),
    ("GET", "/openai/deployments/minilm/embeddings", 405, "openai", "POST"),
    ("DELETE", "/openai/deployments/minilm/embeddings?api-version=2024-02-01", 405, "openai",
     "POST"),
    ("POST", "/openai/deployments/minilm/chat/completions", 404, "openai", None),
    ("POST", "/openai/deployments/embeddings", 404, "openai", None),
]


@pytest.mark.parametrize("method, path, status, dialect, allow", UNSERVED,
                         ids=[f"{c[0]} {c[1].split('?')[0]}" for c in UNSERVED])
def test_unserved_routes_and_methods_answer_in_the_paths_dialect(live_server, method, path,
                                                                  status, dialect, allow):
    body = b'{"input": ["a"]}' if method in ("POST", "PUT", "PATCH") else None
    got, headers, data = request(live_server, method, path, body,
                                 {**AUTH, "x-ms-client-request-id": "route-test-1"})
    assert got == status, data
    assert headers["content-type"] == "application/json"
    assert headers.get("allow") == allow
    assert headers["x-ms-client-request-id"] == "route-test-1" and headers["x-request-id"]
    code = "MethodNotAllowed" if status == 405 else "NotFound"
    assert headers["x-ms-error-code"] == code
    if method == "HEAD":
        assert data == b""
        return
    err = json.loads(data)["error"]
    if dialect == "azure":
        assert set(err) <= {"code", "message", "target", "details"}
        assert err["code"] == code
    else:
        assert set(err) == {"message", "type", "param", "code"}
        assert err["type"] == "invalid_request_error" and err["param"] is None
        assert err["code"] == ("method_not_allowed" if status == 405 else "not_found")
    assert path.split("?")[0] in err["message"]
    if status == 405:
        assert method in err["message"] and allow in err["message"]


KNOWN_MISTAKES = [
    # method, path, headers, status, what the message says to do (found by h_user6)
    ("POST", "/models/embeddings" + Q, AUTH, 404,
     "This service's endpoint is the base URL without /models"),
    ("POST", "/models/images/embeddings" + Q, AUTH, 404,
     "This service's endpoint is the base URL without /models"),
    ("POST", "/v1/images/embeddings", AUTH, 404,
     "Images go to POST /images/embeddings?api-version=2024-05-01-preview"),
    ("POST", "/openai/v1/images/embeddings", AUTH, 404,
     "Images go to POST /images/embeddings?api-version=2024-05-01-preview"),
    ("GET", "/info?Api-Version=2024-05-01-preview", {"api-key": KEY}, 400,
     "Query parameter names are case-sensitive: this request has 'Api-Version', not "
     "'api-version'."),
    ("POST", "/images/embeddings" + Q, AUTH, 422,
     "Unknown field 'url' in an image input; an item is {\"image\": "
     "\"data:image/<format>;base64,...\"} with an optional \"text\"."),
    ("POST", "/embeddings" + Q, AUTH, 422,
     "(azure-ai-inference: model_extras={\"truncate\": \"END\"})."),
]


@pytest.mark.parametrize("method, path, headers, status, says", KNOWN_MISTAKES,
                         ids=[f"{c[0]} {c[1]} {c[3]}" for c in KNOWN_MISTAKES])
def test_a_known_client_mistake_is_told_what_to_do(live_server, method, path, headers, status,
                                                   says):
    body = {"input": [{"url": "https://example.com/cat.jpg"}]} if path.startswith("/images") \
        else {"input": ["word " * 300]} if method == "POST" else None
    got, _, data = request(live_server, method, path, body, headers)
    assert got == status and says in json.loads(data)["error"]["message"], data
    if status == 404:
        assert "Routes: POST /embeddings" in json.loads(data)["error"]["message"]


def test_a_route_404_gives_no_hint_for_an_unknown_path(live_server):
    got, _, data = request(live_server, "POST", "/models/chat/completions" + Q, {}, AUTH)
    assert got == 404 and json.loads(data)["error"]["message"].startswith(
        "No route /models/chat/completions. Routes: "), data


GET_ROUTES = [
    # path, headers: every GET route, with the credentials it needs
    ("/health", {}),
    ("/info" + Q, {"api-key": KEY}),
    ("/info" + Q + "&model=efficientnet", {"api-key": KEY}),
    ("/v1/models", {"api-key": KEY}),
    ("/swagger.json", {}),
    ("/openapi.json", {}),
]


@pytest.mark.parametrize("path, headers", GET_ROUTES, ids=[c[0].split("?")[0] for c in GET_ROUTES])
def test_head_on_a_get_route_answers_its_status_and_headers_without_a_body(live_server, path,
                                                                           headers):
    """A health probe (Azure Front Door's default method is HEAD) or ``curl -I`` gets what GET
    gets, Content-Length included, and no body."""
    status, got_headers, data = request(live_server, "GET", path, None, headers)
    assert status == 200, data
    head_status, head_headers, head_data = request(live_server, "HEAD", path, None, headers)
    assert head_status == 200 and head_data == b""
    assert head_headers["content-length"] == str(len(data)) == got_headers["content-length"]
    assert head_headers["content-type"] == "application/json"
    assert head_headers["x-request-id"] != got_headers["x-request-id"]


@pytest.mark.parametrize("path", ["/info" + Q, "/v1/models"])
def test_head_on_a_get_route_needs_the_same_credentials(live_server, path):
    status, headers, data = request(live_server, "HEAD", path)
    assert status == 401 and data == b""
    assert headers["www-authenticate"].startswith("Bearer")
    assert headers["content-length"] == str(len(request(live_server, "GET", path)[2]))


def test_the_azure_openai_path_embeds_with_the_deployment_in_the_path(live_server, text_backend):
    status, headers, data = request(
        live_server, "POST", "/openai/deployments/minilm/embeddings?api-version=2024-02-01",
        {"input": ["hello world"], "encoding_format": "float"}, AUTH)
    assert status == 200, data
    doc = json.loads(data)
    assert doc["model"] == "all-MiniLM-L6-v2"
    got = np.asarray(doc["data"][0]["embedding"], dtype=np.float32)
    assert np.abs(got - text_backend.encode(["hello world"]).vectors[0]).max() <= 1e-5


@pytest.mark.parametrize("deployment, body, status, code", [
    ("no-such-deployment", {"input": ["a"]}, 404, "model_not_found"),
    ("efficientnet", {"input": ["a"]}, 404, "modality_not_supported"),
    ("minilm", {"input": []}, 400, "invalid_parameter"),
])
def test_the_azure_openai_path_answers_errors_in_openai_shape(live_server, deployment, body,
                                                               status, code):
    got, headers, data = request(live_server, "POST",
                                 f"/openai/deployments/{deployment}/embeddings", body, AUTH)
    assert got == status, data
    err = json.loads(data)["error"]
    assert set(err) == {"message", "type", "param", "code"} and err["code"] == code


def test_served_routes_still_reach_their_own_function(live_server):
    """Adding the catch-all must not capture a route that is served (the most specific wins)."""
    assert request(live_server, "POST", "/embeddings" + Q, {"input": ["a"]}, AUTH)[0] == 200
    assert request(live_server, "POST", "/v1/embeddings", {"input": "a"}, AUTH)[0] == 200
    assert request(live_server, "GET", "/v1/models", None, {"api-key": KEY})[0] == 200
    assert request(live_server, "GET", "/health")[0] == 200
    assert request(live_server, "GET", "/swagger.json")[0] == 200
