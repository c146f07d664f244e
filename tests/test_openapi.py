"""The served OpenAPI document: valid (openapi-spec-validator), served without credentials at
both URLs, built from the code it describes (routes, enums, limits, deployments, error codes),
cheap and built once per process. Its conformance to the live server is tests/test_schemathesis.py.
"""

from __future__ import annotations

import json
import re

import pytest
from openapi_spec_validator import validate

from conftest import API_VERSION, KEY, ROOT, make_service, post
from embedding_core import dialect_openai, openai_tokens
from embedding_core.encodings import FORMATS
from embedding_core.openapi import ERROR_CODES, EXAMPLE_IMAGE, OPENAPI_VERSION
from embedding_core.registry import INPUT_TYPES
from embedding_core.schema import EXTRA_MODES
from embedding_core.service import ROUTES, ApiRequest
from embedding_core.settings import SUPPORTED_API_VERSIONS
from test_http_errors import request


def served(svc, path="/openapi.json"):
    res = svc.handle(path.strip("/"), ApiRequest("GET", path, {}))
    assert res.status == 200
    return res.json()


@pytest.fixture(scope="module")
def doc():
    return served(make_service())


def test_served_at_both_urls_without_credentials_and_valid(live_server):
    docs = []
    for path in ("/swagger.json", "/openapi.json"):
        status, headers, data = request(live_server, "GET", path)
        assert status == 200 and headers["content-type"] == "application/json"
        docs.append(json.loads(data))
    assert docs[0] == docs[1]
    assert docs[0]["openapi"] == OPENAPI_VERSION == "3.0.3"
    validate(docs[0])  # openapi-spec-validator: raises on any violation of the 3.0 schema


def test_every_route_and_method_is_documented_and_nothing_else(doc):
    """Every route and method but HEAD, which GET implies (RFC 9110)."""
    assert {p: set(ops) for p, ops in doc["paths"].items()} == {
        "/" + r.template: {m.lower() for m in r.methods if m != "HEAD"} for r in ROUTES.values()}
    ids = [op["operationId"] for ops in doc["paths"].values() for op in ops.values()]
    assert len(ids) == len(set(ids))


def test_enums_come_from_the_validators(doc):
    c = doc["components"]
    assert c["parameters"]["ApiVersion"]["schema"]["enum"] == list(SUPPORTED_API_VERSIONS)
    assert c["parameters"]["ApiVersion"]["required"] is True
    for body in ("EmbeddingsOptions", "ImageEmbeddingsOptions"):
        fields = c["schemas"][body]["properties"]
        assert fields["encoding_format"]["enum"] == [*FORMATS, None]
        assert fields["input_type"]["enum"] == [*INPUT_TYPES, None]
    assert c["schemas"]["ExtraParameters"]["enum"] == list(EXTRA_MODES)
    openai = c["schemas"]["CreateEmbeddingRequest"]["properties"]
    assert openai["encoding_format"]["enum"] == [*dialect_openai.ENCODINGS, None]
    assert c["schemas"]["OpenAITokenIds"]["items"]["maximum"] == openai_tokens.SIZE - 1


def test_parameters_per_dialect(doc):
    def names(path, method):
        out = set()
        for p in doc["paths"][path][method]["parameters"]:
            if "$ref" in p:
                p = doc["components"]["parameters"][p["$ref"].rsplit("/", 1)[1]]
            out.add((p["name"], p["in"], p.get("required", False)))
        return out

    common = {("x-ms-client-request-id", "header", False)}
    azure = common | {("api-version", "query", True), ("extra-parameters", "header", False),
                      ("azureml-model-deployment", "header", False)}
    assert names("/embeddings", "post") == azure
    assert names("/images/embeddings", "post") == azure
    assert names("/info", "get") == common | {("api-version", "query", True),
                                              ("azureml-model-deployment", "header", False),
                                              ("model", "query", False)}
    assert names("/v1/embeddings", "post") == common        # no api-version, no Azure headers
    assert names("/openai/deployments/{deployment}/embeddings", "post") == common | {
        ("deployment", "path", True), ("api-version", "query", False)}
    assert names("/health", "get") == names("/swagger.json", "get") == common


def test_security_and_errors_per_dialect(doc):
    assert doc["security"] == [{"ApiKeyAuth": []}, {"BearerAuth": []}]
    schemes = doc["components"]["securitySchemes"]
    assert schemes["ApiKeyAuth"] == {**schemes["ApiKeyAuth"], "type": "apiKey", "in": "header",
                                     "name": "api-key"}
    assert schemes["BearerAuth"]["type"] == "http" and schemes["BearerAuth"]["scheme"] == "bearer"
    for path in ("/health", "/swagger.json", "/openapi.json"):
        assert doc["paths"][path]["get"]["security"] == []
        # 503: the app cannot load its packages (any route); /health: also while no call could
        # be authenticated
        assert set(doc["paths"][path]["get"]["responses"]) == {"200", "500", "503"}
    for path, ops in doc["paths"].items():
        for op in ops.values():
            openai = path.startswith(("/v1", "/openai"))
            for status, res in op["responses"].items():
                assert res["headers"]["x-request-id"]["$ref"].endswith("/RequestId")
                if status == "200":
                    continue
                ref = res["content"]["application/json"]["schema"]["allOf"][0]["$ref"]
                assert ref.endswith("OpenAI.ErrorResponse" if openai else
                                    "Azure.Core.Foundations.ErrorResponse"), (path, status)
                assert res["headers"]["x-ms-error-code"]["required"] is True
                if status == "401":
                    assert "WWW-Authenticate" in res["headers"]
                if status in ("429", "503"):     # optional on 503: not sent when waiting is vain
                    assert res["headers"]["Retry-After"]["$ref"].endswith(
                        "/RetryAfter" if status == "429" else "/RetryAfterOptional")
            if op.get("security") != []:
                assert "401" in op["responses"]
            if openai:
                assert "422" not in op["responses"]              # OpenAI's validation status: 400
    assert set(doc["paths"]["/embeddings"]["post"]["responses"]) == {
        "200", "400", "401", "404", "413", "415", "422", "429", "499", "500", "503"}


def test_limits_and_deployments_come_from_settings_and_registry():
    svc = make_service(EMBEDDINGS_MAX_INPUTS="7", EMBEDDINGS_MAX_IMAGE_INPUTS="3",
                       EMBEDDINGS_MAX_BODY_BYTES="65536", EMBEDDINGS_MAX_REQUEST_TOKENS="5000")
    doc = served(svc)
    validate(doc)
    s = doc["components"]["schemas"]
    assert s["EmbeddingsOptions"]["properties"]["input"]["oneOf"][2]["maxItems"] == 7
    assert s["CreateEmbeddingRequest"]["properties"]["input"]["oneOf"][2]["maxItems"] == 7
    assert s["ImageEmbeddingsOptions"]["properties"]["input"]["maxItems"] == 3
    assert "65536" in doc["paths"]["/embeddings"]["post"]["description"]
    text = json.dumps(doc)
    assert "5000 tokens" in text and "256 tokens per input" in text
    for dep in svc.registry.deployments:
        assert f"`{dep.name}`" in doc["info"]["description"]
        for alias in dep.aliases:
            assert f"`{alias}`" in text


def test_auth_disabled_documents_no_security():
    doc = served(make_service(EMBEDDINGS_AUTH="disabled"))
    validate(doc)
    assert doc["security"] == []
    assert not any("401" in op["responses"] for ops in doc["paths"].values()
                   for op in ops.values())


def test_error_codes_are_every_error_the_code_raises():
    """ERROR_CODES (what x-ms-error-code may say, per status) against every ApiError in the code:
    nothing raised is undocumented, nothing documented is never raised."""
    raised = set()
    for path in (ROOT / "embedding_core").glob("*.py"):
        src = path.read_text()
        raised |= {(int(s), c) for s, c in re.findall(r'ApiError\(\s*(\d{3}),\s*"(\w+)"', src)}
        # constructors taking the code as a parameter with a default, e.g. errors.validation
        raised |= {(int(s), c) for c, s in re.findall(
            r'code: str = "(\w+)"\) -> ApiError:\s+return ApiError\((\d{3}), code', src)}
    documented = {(s, c) for s, codes in ERROR_CODES.items() for c in codes}
    assert raised == documented


def test_cheap_built_once_and_never_loads_a_model():
    svc = make_service()
    first = svc.openapi(ApiRequest("GET", "/openapi.json", {}), None)
    assert svc.openapi(ApiRequest("GET", "/swagger.json", {}), None) is first
    assert not any(svc.registry.is_loaded(d) for d in svc.registry.deployments)
    assert svc.registry._backends == {}


def test_the_documented_examples_work(live_server):
    """Each request body example, sent as documented, is a 200 of the documented shape."""
    status, _, data = request(live_server, "GET", "/openapi.json")
    doc = json.loads(data)
    for path, ops in doc["paths"].items():
        for method, op in ops.items():
            example = op.get("requestBody", {}).get("content", {}).get(
                "application/json", {}).get("example")
            if example is None:
                continue
            url = path.replace("{deployment}", "all-MiniLM-L6-v2")
            if any(p.get("$ref", "").endswith("/ApiVersion") for p in op["parameters"]):
                url += f"?api-version={API_VERSION}"
            status, headers, data = request(live_server, method.upper(), url, example,
                                            {"api-key": KEY, "Content-Type": "application/json"})
            assert status == 200, (path, data)
            result = json.loads(data)
            assert len(result["data"]) == len(example["input"])
            assert isinstance(result["data"][0]["embedding"][0], float)
    assert EXAMPLE_IMAGE in json.dumps(doc)


def test_readme_names_the_document():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert "/swagger.json" in readme and "/openapi.json" in readme


def test_a_replacement_registry_is_what_gets_documented(tmp_path):
    from test_http_registry import _text_entry

    entry = {**_text_entry(), "name": "mini-m", "aliases": ["mm"], "default": True,
             "matryoshka_dimensions": [128, 64]}
    (tmp_path / "registry.json").write_text(json.dumps({"deployments": [entry]}))
    doc = served(make_service(EMBEDDINGS_REGISTRY=str(tmp_path / "registry.json")))
    validate(doc)
    described = "`mini-m` (default), aliases `mm`: 384 dimensions (also 128, 64), 256 tokens"
    assert described in doc["info"]["description"]
    assert "all-MiniLM-L6-v2" not in json.dumps(doc)
    assert doc["components"]["schemas"]["ModelInfo"]["properties"]["model_type"]["enum"] == [
        "embeddings"]


# -- what the document says the server accepts and answers, as it does ---------------------------

def _served(svc, path="/openapi.json"):
    res = svc.handle(path.strip("/"), ApiRequest("GET", path, {}))
    assert res.status == 200
    return res.json()


def test_an_empty_input_array_is_refused_and_documented_so(service):
    doc = _served(make_service())
    s = doc["components"]["schemas"]
    for body in ("EmbeddingsOptions", "CreateEmbeddingRequest"):
        array = s[body]["properties"]["input"]["oneOf"][2]
        assert array["type"] == "array" and array["minItems"] == 1, body
    res = post(service, {"input": []})
    assert res.status == 422


def test_an_empty_text_in_an_array_is_refused_and_documented_so(service):
    assert post(service, {"input": ["a", ""]}).status == 422
    doc = _served(make_service())
    assert doc["components"]["schemas"]["TextInput"]["minLength"] == 1


def test_an_image_item_with_an_unknown_field_is_refused_and_documented_so(service):
    res = post(service, {"input": [{"image": EXAMPLE_IMAGE, "colour": "red"}]},
               path="/images/embeddings")
    assert res.status == 422
    doc = _served(make_service())
    assert doc["components"]["schemas"]["ImageEmbeddingInput"]["additionalProperties"] is False


def test_timing_headers_are_documented_where_they_are_sent(service):
    doc = _served(make_service())
    res = post(service, {"input": ["timing"]})
    assert res.status == 200 and "x-queue-time" in res.headers and "x-inference-time" in res.headers
    for path in ("/embeddings", "/v1/embeddings"):
        headers = doc["paths"][path]["post"]["responses"]["200"]["headers"]
        assert {"x-queue-time", "x-inference-time"} <= set(headers), path
    info = service.handle("info", ApiRequest("GET", "/info", {"api-key": KEY},
                                             {"api-version": API_VERSION}))
    assert info.status == 200 and "x-queue-time" not in info.headers
    for path, method in (("/info", "get"), ("/health", "get"), ("/v1/models", "get")):
        headers = doc["paths"][path][method]["responses"]["200"]["headers"]
        assert "x-queue-time" not in headers and "x-inference-time" not in headers, path


def test_each_embeddings_route_documents_its_own_body_limit():
    doc = _served(make_service(EMBEDDINGS_MAX_BODY_BYTES="65536",
                               EMBEDDINGS_MAX_IMAGE_BODY_BYTES="1234567"))
    assert "Body at most 65536 bytes (`EMBEDDINGS_MAX_BODY_BYTES`)" in \
        doc["paths"]["/embeddings"]["post"]["description"]
    assert "Body at most 1234567 bytes (`EMBEDDINGS_MAX_IMAGE_BODY_BYTES`)" in \
        doc["paths"]["/images/embeddings"]["post"]["description"]


def test_the_info_routes_422_for_a_blank_model_is_documented(service):
    res = service.handle("info", ApiRequest("GET", "/info", {"api-key": KEY},
                                            {"api-version": API_VERSION, "model": " "}))
    assert res.status == 422 and res.headers["x-ms-error-code"] == "InvalidParameter"
    doc = _served(make_service())
    documented = doc["paths"]["/info"]["get"]["responses"]["422"]
    assert documented["headers"]["x-ms-error-code"]["schema"]["enum"] == ["InvalidParameter"]


def test_each_operation_documents_only_the_codes_it_can_answer():
    doc = _served(make_service())
    info = doc["paths"]["/info"]["get"]["responses"]

    def codes(res):
        return res["headers"]["x-ms-error-code"]["schema"]["enum"]
    assert codes(info["400"]) == ["MissingApiVersionParameter", "UnsupportedApiVersionValue",
                                  "InvalidHeaderValue"]
    assert codes(info["404"]) == ["ModelNotFound"]
    assert codes(doc["paths"]["/health"]["get"]["responses"]["503"]) == ["ServiceUnavailable"]
