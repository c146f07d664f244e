"""schemathesis against the live local host, driven by the document the host serves.

For every route and method in ``service.ROUTES``, hypothesis draws requests from the served
OpenAPI document — valid ones and ones that break it (schemathesis's positive and negative
modes) — sends them over loopback with and without a valid key, and checks each answer:

- no 5xx (``not_a_server_error``);
- the status, content type, headers and body are what the document says for that status
  (``status_code_conformance``, ``content_type_conformance``, ``response_headers_conformance``,
  ``response_schema_conformance``): e.g. every Azure error carries ``x-ms-error-code`` naming a
  code documented for that status, every OpenAI-dialect error is OpenAI's shape;
- requests that break the document are refused with a 4xx (``negative_data_rejection``);
- authentication is enforced where the document says it is (``ignored_auth``), and only there
  (a 401 where none is documented fails status conformance).

Statuses random requests do not reach are produced on purpose and checked the same way: 413
and 429 (small limits), 503 (a model that fails its checksum) in both dialects, and 500 on every
route of a misconfigured server.

Not run: ``positive_data_acceptance`` (the contract makes some schema-valid values a 422 on
purpose — a dimension or pass-through extra the deployment does not support, a token id outside
its vocabulary, an image that is not a data URL — exactly as Azure's own specification says) and
``unsupported_method`` (undocumented methods reach the catch-all route, tested in
tests/test_http_routes.py).

Bounded: ``EXAMPLES`` per operation, derandomised (the same requests every run), and a time
budget per operation after which the remaining examples send nothing. Set
``EMBEDDINGS_SCHEMATHESIS_EXAMPLES`` (and ``EMBEDDINGS_SCHEMATHESIS_BUDGET_S``) for a deeper
run, ``EMBEDDINGS_FUZZ_RANDOM=1`` for different requests each run.
"""

from __future__ import annotations

import json
import os
import time
import warnings

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.checks import (content_type_conformance, ignored_auth, negative_data_rejection,
                                 not_a_server_error, response_headers_conformance,
                                 response_schema_conformance, status_code_conformance)

from conftest import API_VERSION, KEY, LiveServer
from embedding_core.registry import DEFAULT_REGISTRY
from embedding_core.service import ROUTES

EXAMPLES = int(os.environ.get("EMBEDDINGS_SCHEMATHESIS_EXAMPLES", "40"))
BUDGET_S = float(os.environ.get("EMBEDDINGS_SCHEMATHESIS_BUDGET_S", "30"))
RANDOM = os.environ.get("EMBEDDINGS_FUZZ_RANDOM") == "1"   # new requests each run, not CI's
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance,
          response_headers_conformance, response_schema_conformance, negative_data_rejection,
          ignored_auth]

OPERATIONS = [
    pytest.param(f"/{r.template}", method, id=f"{method} /{r.template}")
    for r in ROUTES.values() for method in r.methods
    if method != "HEAD"]   # not in the document (GET implies it); tests/test_http_routes.py


@pytest.fixture(scope="module")
def api_schema(live_server):
    return schemathesis.openapi.from_url(live_server.url + "/openapi.json")


def accepted_by_design(case) -> bool:
    """A negative case the server accepts on purpose: the documented case-insensitive
    ``extra-parameters`` values (with surrounding spaces), e.g. ``Pass-Through``."""
    from embedding_core.schema import EXTRA_MODES

    value = (case.headers or {}).get("extra-parameters")
    return isinstance(value, str) and value.strip().lower() in EXTRA_MODES


@pytest.mark.parametrize("path, method", OPERATIONS)
def test_every_response_conforms_to_the_document(api_schema, live_server, path, method):
    operation = api_schema[path][method]
    strategy = st.one_of(operation.as_strategy(GenerationMode.POSITIVE),
                         operation.as_strategy(GenerationMode.NEGATIVE))
    session = requests.Session()
    deadline = time.monotonic() + BUDGET_S
    sent = [0]

    @settings(max_examples=EXAMPLES, deadline=None, database=None, derandomize=not RANDOM,
              suppress_health_check=list(HealthCheck))
    @given(case=strategy, with_key=st.booleans())
    def run(case, with_key):
        if time.monotonic() > deadline:
            return
        checks = CHECKS
        if case.meta is not None and case.meta.generation.mode is GenerationMode.NEGATIVE \
                and accepted_by_design(case):
            checks = [c for c in CHECKS if c is not negative_data_rejection]
        sent[0] += 1
        case.call_and_validate(base_url=live_server.url, session=session, checks=checks,
                               headers={"api-key": KEY} if with_key else None, timeout=60)

    run()
    if time.monotonic() > deadline:
        warnings.warn(f"{method} {path}: time budget of {BUDGET_S:g} s spent after "
                      f"{sent[0]} requests", stacklevel=1)
    assert sent[0] > 0


# -- statuses random requests do not reach --------------------------------------------------------

@pytest.fixture(scope="module")
def rare_server(tmp_path_factory):
    """Small limits (413, and 429: one image may queue), and a deployment whose file fails its
    checksum (503)."""
    from test_http_registry import _text_entry

    tmp = tmp_path_factory.mktemp("registry")
    default = json.loads(DEFAULT_REGISTRY.read_text())["deployments"]
    for d in default:   # the shipped deployments, with their paths made absolute
        for f in d["files"].values():
            if "package" not in f:
                f["path"] = str(DEFAULT_REGISTRY.parent / f["path"])
        if d.get("calibration"):
            d["calibration"]["path"] = str(DEFAULT_REGISTRY.parent / d["calibration"]["path"])
    broken = {**_text_entry(), "name": "broken", "aliases": [], "default": False}
    broken["files"]["tokenizer"]["sha256"] = "0" * 64
    (tmp / "registry.json").write_text(json.dumps({"deployments": [*default, broken]}))
    server = LiveServer({"EMBEDDINGS_API_KEYS": KEY,
                         "EMBEDDINGS_REGISTRY": str(tmp / "registry.json"),
                         "EMBEDDINGS_MAX_BODY_BYTES": "2048",
                         "EMBEDDINGS_RETRY_AFTER_SECONDS": "3"})
    yield server
    server.stop()


@pytest.fixture(scope="module")
def misconfigured_server():
    """A setting the service refuses: every route answers 500, /health included, so the host is
    taken as up on any HTTP answer."""
    import urllib.error
    import urllib.request

    plain = urllib.request.urlopen

    def any_answer(url, timeout):
        try:
            return plain(url, timeout=timeout)
        except urllib.error.HTTPError as answer:
            return answer

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(urllib.request, "urlopen", any_answer)
        server = LiveServer({"EMBEDDINGS_API_KEYS": KEY, "EMBEDDINGS_MAX_INPUTS": "lots"})
    yield server
    server.stop()


CONFORMANCE = [status_code_conformance, content_type_conformance, response_headers_conformance,
               response_schema_conformance]
AZURE = {"api-version": API_VERSION}
BIG = {"input": ["x" * 3000]}


@pytest.mark.parametrize("path, method, query, body, status", [
    ("/embeddings", "POST", AZURE, BIG, 413),
    ("/v1/embeddings", "POST", {}, BIG, 413),
    ("/embeddings", "POST", AZURE, {"input": ["a"], "model": "broken"}, 503),
    ("/v1/embeddings", "POST", {}, {"input": ["a"], "model": "broken"}, 503),
])
def test_rare_statuses_conform_to_the_document(api_schema, rare_server, path, method, query,
                                               body, status):
    case = api_schema[path][method].Case(query=query, body=body,
                                         headers={"api-key": KEY, "x-ms-client-request-id": "r-1"})
    response = case.call(base_url=rare_server.url, timeout=60)
    assert response.status_code == status, response.text
    case.validate_response(response, checks=CONFORMANCE)


LONG = "lorem ipsum dolor sit amet consectetur adipiscing elit " * 40   # truncated to 256 tokens


@pytest.fixture(scope="module")
def busy_server():
    """A queue of 20,000 tokens: while a request of 70 × 256 tokens runs, another of 30 × 256 is
    refused with 429."""
    server = LiveServer({"EMBEDDINGS_API_KEYS": KEY, "EMBEDDINGS_MAX_REQUEST_TOKENS": "20000",
                         "EMBEDDINGS_MAX_QUEUE_TOKENS": "20000"})
    yield server
    server.stop()


@pytest.mark.parametrize("path, query, headers, body", [
    ("/embeddings", AZURE, {"extra-parameters": "pass-through"},
     {"input": [LONG] * 30, "truncate": "END"}),
    ("/v1/embeddings", {}, {}, {"input": [" ".join(LONG.split()[:90])] * 60}),   # ~13,000
])
def test_a_429_conforms_to_the_document(api_schema, busy_server, path, query, headers, body):
    import threading
    import time

    from test_http_errors import AUTH, Q, request

    big = threading.Thread(target=request, args=(
        busy_server, "POST", "/embeddings" + Q, {"input": [f"{i} {LONG}" for i in range(70)],
                                                 "truncate": "END"},
        {**AUTH, "extra-parameters": "pass-through"}))
    big.start()
    try:
        deadline = time.monotonic() + 30
        while json.loads(request(busy_server, "GET", "/health")[2])["queue"]["queued_tokens"] \
                < 10000:
            assert big.is_alive() and time.monotonic() < deadline
            time.sleep(0.005)
        case = api_schema[path]["POST"].Case(query=query, body=body,
                                             headers={"api-key": KEY, **headers})
        response = case.call(base_url=busy_server.url, timeout=60)
    finally:
        big.join(120)
    assert response.status_code == 429, response.text
    retry_after = {k.lower(): v for k, v in response.headers.items()}["retry-after"]
    assert int(retry_after if isinstance(retry_after, str) else retry_after[0]) >= 1
    case.validate_response(response, checks=CONFORMANCE)


@pytest.mark.parametrize("path, method", [
    (p.values[0], p.values[1]) for p in OPERATIONS if "{" not in p.values[0]])
def test_a_misconfigured_server_answers_a_documented_500_everywhere(api_schema,
                                                                    misconfigured_server, path,
                                                                    method):
    operation = api_schema[path][method]
    body = operation.body[0].definition.get("example") if operation.body else None
    query = AZURE if any(p.name == "api-version" for p in operation.query) else {}
    case = operation.Case(query=query, headers={"api-key": KEY},
                          **({"body": body, "media_type": "application/json"} if body else {}))
    response = case.call(base_url=misconfigured_server.url, timeout=60)
    assert response.status_code == 500, response.text
    case.validate_response(response, checks=CONFORMANCE)
