"""A bounded hypothesis fuzz test over the bodies and headers of every route, both dialects,
with and without credentials: no answer may be a 5xx, and every error must be its dialect's
error shape (Azure.Core's with a matching ``x-ms-error-code``, or OpenAI's four fields).

Requests are drawn from: JSON of random shapes and depths around the fields the routes know,
nesting far past any parser's limit, huge and odd strings (100k+ characters, combining accents,
zero-width and NUL characters, lone surrogates), random bytes, odd content types, odd values of
``api-key``/``Authorization``/``extra-parameters``/``azureml-model-deployment``/
``x-ms-client-request-id``, odd ``api-version`` and query strings.

Over real HTTP through the local host, which dispatches route templates as the Functions host
does (the Azure OpenAI path ``/openai/deployments/{deployment}/embeddings`` and the catch-all
route included); the same routes are also fuzzed at function level (the registered functions
called with ``func.HttpRequest``, as the Functions host calls them).

Bounded: a fixed number of examples, derandomised (set ``EMBEDDINGS_FUZZ_RANDOM=1`` for new
ones, ``EMBEDDINGS_FUZZ_EXAMPLES`` for more), a time budget per test after which the remaining
examples send nothing (``EMBEDDINGS_FUZZ_BUDGET_S``), bodies of at most ~1 MB.
"""

from __future__ import annotations

import http.client
import json
import os
import re
import time
from dataclasses import dataclass
from urllib.parse import quote, unquote, urlencode, urlsplit

import azure.functions as func
import pytest
from hypothesis import HealthCheck, Phase, event, example, given, settings
from hypothesis import strategies as st

from conftest import API_VERSION, KEY, ROOT, process_service
from tools.local_host import Limits as HostLimits
from embedding_core import service as service_module
from embedding_core.schema import EXTRA_MODES, KNOWN_FIELDS
from embedding_core.settings import SUPPORTED_API_VERSIONS
from test_function_app import functions as registered_functions

EXAMPLES = int(os.environ.get("EMBEDDINGS_FUZZ_EXAMPLES", "150"))
BUDGET_S = float(os.environ.get("EMBEDDINGS_FUZZ_BUDGET_S", "60"))   # per test
RANDOM = os.environ.get("EMBEDDINGS_FUZZ_RANDOM") == "1"
FUZZ = settings(max_examples=EXAMPLES, deadline=None, database=None, derandomize=not RANDOM,
                suppress_health_check=list(HealthCheck))

ROUTES = service_module.ROUTES
TEMPLATED = "openai/deployments/{deployment}/embeddings"
REACHABLE = [r for r in ROUTES.values() if "{" not in r.template]
# The embedding routes, where the bodies matter, three times as often as the others.
WEIGHTED = [r.template for r in REACHABLE for _ in range(3 if "embeddings" in r.template else 1)]
METHODS = ["GET", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "HEAD"]
DEPLOYMENT_NAMES = ["all-MiniLM-L6-v2", "minilm", "MINILM", " minilm ", "all-MiniLM-L6-v2-fast",
                    "minilm-conse-efficientnet-lite0", "efficientnet", "nope", ""]


# -- strategies -----------------------------------------------------------------------------------

HUGE = [
    "a" * 200_000,                       # one 'word' far over the token limit
    "word " * 40_000,
    "\u0301" * 60_000,                   # combining accents only
    "e\u0301" * 30_000,
    "\u200b" * 20_000,                   # zero-width: no tokens at all
    "💥" * 30_000,
    " " * 5_000, "\t\n\r" * 1000,
    "\x00" * 100, "a\x00b",
    "\ufeff", "\u2028\u2029", "﷽" * 2000,
]
IMAGE = ("data:image/png;base64,iVBORw0KGgoAAAANSUhEUgAAAAgAAAAICAIAAABLbSncAAAAFUlEQVR42mM8ISf"
         "HgA0wMeAAg1MCANDKARQfGKMRAAAAAElFTkSuQmCC")
ODD_IMAGES = [IMAGE[:60], IMAGE[:-8], IMAGE.replace("png", "jpeg"), IMAGE.replace("png", "tiff"),
              IMAGE.replace("base64", "utf8"), IMAGE.upper(), "data:image/png;base64,",
              "data:,", "http://127.0.0.1:9/cat.png", "file:///etc/passwd", "data:image/png;base64,"
              + "A" * 120_000, "data:image/gif;base64,R0lGODlhAQABAAAAACw=", " " + IMAGE]


def mostly(good, odd):
    """``good`` seven times in ten, else ``odd`` (so most requests get past the checks that
    come first — credentials, content type, api-version — and reach the body's)."""
    return st.sampled_from([True] * 7 + [False] * 3).flatmap(lambda g: good if g else odd)


def pick(values):
    """One of ``values``, shown by index in statistics (some are 100k characters long)."""
    return st.integers(0, len(values) - 1).map(values.__getitem__)


huge = pick(HUGE)
scalars = (st.none() | st.booleans() | st.integers(min_value=-2**70, max_value=2**70)
           | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=40) | huge
           | st.sampled_from(["float", "base64", "int8", "binary", "END", "query", "document",
                              "all-MiniLM-L6-v2", "minilm", "data:image/png;base64,AAAA"]))
json_values = st.recursive(
    scalars,
    lambda children: st.lists(children, max_size=6)
    | st.dictionaries(st.sampled_from([*KNOWN_FIELDS, "truncate", "user", "image", "text"])
                      | st.text(max_size=12), children, max_size=6),
    max_leaves=40)
deep = st.integers(min_value=1, max_value=3000).map(lambda n: _Raw("[" * n + "]" * n))
odd_token_ids = st.lists(st.integers(min_value=-5, max_value=2**64), max_size=40)
token_ids = st.lists(st.integers(min_value=0, max_value=30_600), min_size=1, max_size=300)
texts = st.text(min_size=1, max_size=80) | huge
text_inputs = mostly(
    texts | st.lists(texts | token_ids, min_size=1, max_size=6) | token_ids,
    json_values | deep | odd_token_ids | st.lists(odd_token_ids | json_values | deep, max_size=4))
image_items = st.fixed_dictionaries(
    {"image": mostly(st.just(IMAGE), pick(ODD_IMAGES) | json_values | deep)},
    optional={"text": mostly(texts, json_values)})
image_inputs = mostly(st.lists(image_items, min_size=1, max_size=3),
                      json_values | deep | st.lists(mostly(image_items, json_values), max_size=3)
                      | st.lists(st.fixed_dictionaries({"image": st.just(IMAGE)}, optional={
                          "extra": json_values}), min_size=65, max_size=70))


def bodies(image: bool):
    """JSON bodies around the fields the route knows, mostly well-formed."""
    fields = st.fixed_dictionaries({"input": image_inputs if image else text_inputs}, optional={
        "dimensions": mostly(st.sampled_from([None, 384, 1280]), json_values | deep
                             | st.integers(-2, 2**70)),
        "encoding_format": mostly(st.sampled_from([None, "float", "base64", "int8", "uint8",
                                                   "binary", "ubinary"]), json_values | deep),
        "input_type": mostly(st.sampled_from([None, "text", "query", "document"]), json_values),
        "model": mostly(st.sampled_from(DEPLOYMENT_NAMES), json_values | deep),
        "truncate": mostly(st.sampled_from(["END", "START", "NONE", "end"]), json_values | deep),
        "user": json_values,
    })
    extra = mostly(st.just({}), st.dictionaries(st.text(max_size=10), json_values | deep,
                                                max_size=3))
    return st.tuples(fields, extra).map(lambda t: {**t[1], **t[0]})


@dataclass(frozen=True)
class _Raw:
    """A JSON fragment inserted verbatim (nesting no encoder would produce)."""
    text: str


def _dump(value) -> str:
    if isinstance(value, _Raw):
        return value.text
    if isinstance(value, dict):
        return "{" + ",".join(json.dumps(k) + ":" + _dump(v) for k, v in value.items()) + "}"
    if isinstance(value, list):
        return "[" + ",".join(_dump(v) for v in value) + "]"
    return json.dumps(value)


ODD_BODIES = [
    b"", b" ", b"null", b"[]", b"{}", b'{"input": NaN}', b'{"input": [Infinity]}',
    b'{"input": ["\\ud800"]}', b'{"input": ["a"], "input": 5}', b"\xef\xbb\xbf{}",
    b'{"input": ["\xff"]}', b'{"input": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",
    b'{"input": "' + b"\\u0000" * 10_000 + b'"}', b'{"input": ["a"]} trailing']


def raw_bodies(image: bool):
    return mostly(
        bodies(image).map(lambda d: _dump(d).encode()),
        st.one_of(bodies(image).map(lambda d: _dump(d).encode("utf-16")),
                  json_values.map(lambda v: _dump(v).encode()), st.binary(max_size=2000),
                  pick(ODD_BODIES)))


HEADER_CHARS = st.characters(min_codepoint=0x20, max_codepoint=0xFF, exclude_characters="\x7f")
header_text = st.text(HEADER_CHARS, max_size=60) | st.sampled_from(
    ["x" * 9000, "\t", " ", "é" * 50, "a,b", "null", "🙂".encode().decode("latin-1")])
content_types = mostly(
    st.sampled_from([None, "application/json", "application/json; charset=utf-8",
                     "APPLICATION/JSON", "application/merge-patch+json"]),
    st.sampled_from(["text/plain", "application/x-www-form-urlencoded", "*/*", "application/",
                     "multipart/form-data; boundary=x", "", ";", "application/json;;;",
                     "application/json, text/plain"]) | header_text)
auth_headers = mostly(
    st.sampled_from([{"api-key": KEY}, {"Authorization": f"Bearer {KEY}"},
                     {"api-key": KEY, "Authorization": "Bearer x"}]),
    st.sampled_from([
        {}, {"api-key": "wrong"}, {"Authorization": "Bearer"}, {"Authorization": "Bearer "},
        {"Authorization": f"bearer   {KEY}"}, {"Authorization": f"Basic {KEY}"},
        {"Authorization": "Bearer a.b.c"},
        {"Authorization": "Bearer eyJhbGciOiJub25lIn0.eyJzdWIiOiIxIn0."},
        {"api-key": "", "Authorization": f"Bearer {KEY}"}, {"api-key": KEY, "Authorization": "x"},
        {"api-key": "@Microsoft.KeyVault(SecretUri=https://v.vault.azure.net/secrets/k)"}])
    | st.dictionaries(st.sampled_from(["api-key", "Authorization"]), header_text, max_size=2))
other_headers = st.fixed_dictionaries({}, optional={
    "extra-parameters": mostly(st.sampled_from(EXTRA_MODES),
                               st.sampled_from(["DROP", " pass-through ", "allow"]) | header_text),
    "azureml-model-deployment": mostly(st.sampled_from(DEPLOYMENT_NAMES[:2]),
                                       st.sampled_from(DEPLOYMENT_NAMES) | header_text),
    "x-ms-client-request-id": header_text,
    "Accept": st.sampled_from(["application/json", "text/html", "*/*"]) | header_text,
    "x-fuzz": header_text,
})
queries = st.fixed_dictionaries({
    "api-version": mostly(st.sampled_from(SUPPORTED_API_VERSIONS),
                          st.sampled_from([None, "", "2023-01-01", API_VERSION * 50,
                                           API_VERSION.upper()]) | st.text(max_size=20)),
}, optional={
    "model": st.sampled_from(DEPLOYMENT_NAMES) | st.text(max_size=20),
}).flatmap(lambda q: st.dictionaries(st.text(max_size=8), st.text(max_size=8), max_size=2)
           .map(lambda extra: {**extra, **{k: v for k, v in q.items() if v is not None}}))


@dataclass
class Req:
    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: bytes

    def target(self) -> str:
        q = urlencode(self.query)
        return self.path + ("?" + q if q else "")


@st.composite
def requests_to(draw, route_templates: list[str] | None, method_mix: bool = False):
    """A request to one of ``route_templates`` (None: an arbitrary path, for the catch-all)."""
    if route_templates is None:
        segments = draw(st.lists(st.sampled_from(["v1", "openai", "deployments", "embeddings",
                                                  "images", "info", "health", "models", "x"])
                                 | st.text(min_size=1, max_size=12), max_size=5))
        path = "/" + "/".join(quote(s, safe="") for s in segments)
        method = draw(st.sampled_from(METHODS))
    else:
        template = draw(st.sampled_from(route_templates))
        route = ROUTES[template]
        method = draw(st.sampled_from(METHODS)) if method_mix else route.methods[0]
        if "{deployment}" in template:
            name = draw(st.sampled_from(DEPLOYMENT_NAMES[:-1]) | st.text(
                st.characters(exclude_characters="/", exclude_categories=("Cs",)),
                min_size=1, max_size=30))
            path = "/" + template.replace("{deployment}", quote(name, safe=""))
        else:
            path = "/" + template
    headers = {**draw(auth_headers), **draw(other_headers)}
    ctype = draw(content_types)
    if ctype is not None:
        headers["Content-Type"] = ctype
    image = route_templates is not None and "images" in path
    body = draw(raw_bodies(image)) if method not in ("GET", "HEAD") or draw(st.booleans()) else b""
    return Req(method, path, draw(queries), headers, body)


# -- what every answer must look like -------------------------------------------------------------

def check_answer(req: Req, dialect: str, status: int, headers: dict[str, str], body: bytes) -> None:
    where = f"{req.method} {req.target()[:200]} -> {status}: {body[:300]!r}"
    route = service_module.match_route(req.path)
    event(f"{req.method} /{route.template if route else '*'}: {status} "
          f"{headers.get('x-ms-error-code', '')}")                # --hypothesis-show-statistics
    assert status < 500, where
    assert headers.get("content-type") == "application/json", where
    if status == 431:
        # Headers over the host's limit (several 9,000-character values drawn at once): the host
        # answers itself, as the Functions host would, so the app and its request id never see
        # it. Only that, in the same JSON error shape. The host's limit is its default: LiveServer
        # starts it without the caller's LOCAL_HOST_* settings.
        head = len(req.target()) + sum(len(k) + len(v.encode("latin-1")) + 4
                                       for k, v in req.headers.items())
        assert head > HostLimits.max_header_bytes - 256, where   # + Host, Content-Length
        assert json.loads(body)["error"]["code"] == headers["x-ms-error-code"] == \
            "RequestHeaderFieldsTooLarge", where
        return
    assert re.fullmatch(r"[0-9a-f]{32}", headers.get("x-request-id", "")), where
    echoed = headers.get("x-ms-client-request-id")
    assert echoed is None or re.fullmatch(r"[A-Za-z0-9._:{}\-]{1,128}", echoed), where
    if req.method == "HEAD":
        return
    doc = json.loads(body)
    assert isinstance(doc, dict), where
    if status < 400:
        return
    text = body.decode()
    assert "Traceback" not in text and str(ROOT) not in text and KEY not in text, where
    err = doc.get("error")
    assert list(doc) == ["error"] and isinstance(err, dict), where
    assert headers.get("x-ms-error-code"), where
    if dialect == "azure":
        assert set(err) <= {"code", "message", "target", "details"}, where
        assert isinstance(err["code"], str) and err["code"] == headers["x-ms-error-code"], where
        assert isinstance(err["message"], str) and err["message"], where
        assert isinstance(err.get("target", ""), str), where
        for d in err.get("details", []):
            assert isinstance(d["code"], str) and isinstance(d["message"], str), where
    else:
        assert set(err) == {"message", "type", "param", "code"}, where
        assert isinstance(err["message"], str) and err["message"], where
        assert isinstance(err["type"], str) and isinstance(err["code"], str), where
        assert err["param"] is None or isinstance(err["param"], str), where
    if status == 401:
        assert headers.get("www-authenticate", "").startswith("Bearer"), where
    if status == 405:
        assert headers.get("allow"), where
    if status in (429, 503):
        assert int(headers["retry-after"]) >= 1, where


def dialect_of(req: Req) -> str:
    """The route's dialect if it serves the method, else the catch-all's choice by path."""
    route = service_module.match_route(req.path)
    served = route is not None and req.method in route.methods
    return route.dialect if served else service_module.path_dialect(req.path)


_started: dict[str, float] = {}


def within_budget(test: str) -> bool:
    """False once ``test`` has run for BUDGET_S: its remaining examples then send nothing."""
    return time.monotonic() - _started.setdefault(test, time.monotonic()) < BUDGET_S


# -- over HTTP ------------------------------------------------------------------------------------

def send(server, req: Req) -> tuple[int, dict[str, str], bytes]:
    u = urlsplit(server.url)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=120)
    try:
        conn.putrequest(req.method, req.target(), skip_accept_encoding=True)
        for k, v in req.headers.items():
            conn.putheader(k, v.encode("latin-1"))
        conn.putheader("Content-Length", str(len(req.body)))
        conn.endheaders(req.body)
        res = conn.getresponse()
        data = res.read()
        return res.status, {k.lower(): v for k, v in res.getheaders()}, data
    finally:
        conn.close()


@FUZZ
@given(req=requests_to(WEIGHTED))
# drawn once: four of the 9,000-character header values, over the host's 32 KB head limit
@example(req=Req("POST", "/embeddings", {"api-version": API_VERSION},
                 {h: "x" * 9000 for h in ("api-key", "Authorization", "Accept", "x-fuzz")},
                 b'{"input":"0"}'))
def test_http_fuzz_every_reachable_route(live_server, req):
    if within_budget("http"):
        check_answer(req, dialect_of(req), *send(live_server, req))


@settings(FUZZ, max_examples=min(EXAMPLES, 30), phases=[Phase.generate])
@given(req=requests_to([TEMPLATED]) | requests_to(None)
       | requests_to([r.template for r in ROUTES.values()], method_mix=True))
def test_http_fuzz_templated_route_catch_all_and_other_methods(live_server, req):
    check_answer(req, dialect_of(req), *send(live_server, req))


# -- at function level, where the local host cannot reach yet --------------------------------------

@pytest.fixture(scope="module")
def functions():
    """The registered functions, with a service built from this module's environment."""
    mp = pytest.MonkeyPatch()
    with process_service(mp):
        yield {route: fn for route, (_, fn) in registered_functions().items()}
    mp.undo()


def call_function(fns, req: Req) -> tuple[int, dict[str, str], bytes] | None:
    """What the Functions host does with ``req``: the most specific route's function (None when
    that is a route the local host reaches, fuzzed over HTTP above), else the catch-all."""
    route = service_module.match_route(req.path)
    params = {}
    if route is not None and req.method in route.methods:
        if "{" not in route.template:
            return None
        fn = fns[route.template]
        params = {"deployment": unquote(req.path.strip("/").split("/")[2])}
    else:
        fn = fns[service_module.CATCH_ALL]
    res = fn(func.HttpRequest(method=req.method, url="http://localhost" + req.target(),
                              headers=req.headers, params=req.query, body=req.body,
                              route_params=params))
    headers = {k.lower(): v for k, v in res.headers.items()}
    headers.setdefault("content-type", res.mimetype)
    return res.status_code, headers, res.get_body()


@FUZZ
@given(req=requests_to([TEMPLATED]) | requests_to(None)
       | requests_to([r.template for r in ROUTES.values()], method_mix=True))
def test_function_fuzz_templated_route_and_catch_all(functions, req):
    if not within_budget("function"):
        return
    answer = call_function(functions, req)
    if answer is not None:
        check_answer(req, dialect_of(req), *answer)
