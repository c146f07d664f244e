"""The functions registered in function_app.py, called with func.HttpRequest as the Functions
host calls them."""

from __future__ import annotations

import functools
import json

import azure.functions as func
import numpy as np
import pytest

import function_app
from conftest import API_VERSION, KEY
from embedding_core import service as service_module


@pytest.fixture(autouse=True)
def env(monkeypatch):
    for name in list(__import__("os").environ):
        if name.startswith("EMBEDDINGS_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("EMBEDDINGS_API_KEYS", KEY)
    service_module.reset_service()
    yield
    service_module.reset_service()


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
    f = functions()
    assert {k: v[0] for k, v in f.items()} == {
        "embeddings": ["POST"], "images/embeddings": ["POST"], "info": ["GET"], "health": ["GET"]}


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


def test_info_and_health():
    res = call("info", method="GET", headers={"Authorization": f"Bearer {KEY}"})
    assert json.loads(res.get_body()) == {"model_name": "all-MiniLM-L6-v2",
                                          "model_type": "embeddings",
                                          "model_provider_name": "sentence-transformers"}
    res = call("health", method="GET", params={})
    doc = json.loads(res.get_body())
    assert doc["status"] == "ok"
    assert {"name": "all-MiniLM-L6-v2", "modality": "text", "dimensions": 384,
            "loaded": False} in doc["deployments"]


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
    monkeypatch.setattr(backend, "encode", lambda *a, **k: 1 / 0)
    res = call("embeddings", body={"input": ["a"]}, headers={"api-key": KEY})
    body = res.get_body().decode()
    assert res.status_code == 500 and "ZeroDivision" not in body and "Traceback" not in body
