"""The served OpenAPI document (``GET /swagger.json`` and ``GET /openapi.json``).

Built, not written: every path comes from ``service.ROUTES`` (a route without an operation
builder here fails the build, and a test), every enum from the tuples the validators use
(``SUPPORTED_API_VERSIONS``, ``FORMATS``, ``INPUT_TYPES``, ``EXTRA_MODES``, the OpenAI
dialect's ``ENCODINGS``), every limit from the process's ``Settings`` and every deployment from
the ``Registry`` (names, aliases, dimensions, token limits; no model is loaded). The OpenAI
dialect's statuses and error codes are obtained by rendering each Azure error through
``dialect_openai.render_error``, so the two cannot disagree. The service builds it once per
process and serves the same object afterwards.

OpenAPI 3.0.3: what Azure AI Model Inference's own TypeSpec emits (3.0.0), what Azure API
Management imports fully, and what schemathesis and openapi-spec-validator handle best.
"""

from __future__ import annotations

from typing import Any

from . import dialect_openai, errors, openai_tokens
from .encodings import FORMATS
from .registry import INPUT_TYPES, Deployment, Registry
from .schema import EXTRA_MODES, MAX_TOKEN_ID
from .settings import SUPPORTED_API_VERSIONS, Settings

OPENAPI_VERSION = "3.0.3"

# Every error the service raises, by status: what the ``x-ms-error-code`` header (and the Azure
# body's ``code``) may say. tests/test_openapi.py checks this against every ApiError in the code.
ERROR_CODES: dict[int, tuple[str, ...]] = {
    400: ("InvalidRequestBody", "MissingApiVersionParameter", "UnsupportedApiVersionValue",
          "ExtraParametersNotAllowed", "InvalidHeaderValue"),
    401: ("Unauthorized",),
    404: ("ModelNotFound", "ModalityNotSupported", "NotFound"),
    405: ("MethodNotAllowed",),
    413: ("PayloadTooLarge",),
    415: ("UnsupportedMediaType",),
    422: ("InvalidParameter", "InputTooLong", "UnsupportedParameter"),
    429: ("TooManyRequests",),
    499: ("ClientClosedRequest",),
    500: ("InternalServerError",),
    503: ("ModelUnavailable", "ServiceUnavailable"),
}

_WHEN = {
    400: "Malformed request: body not JSON / not an object / not UTF-8, or holding more JSON "
         "strings, arrays and objects (on the image route, commas too) than any valid request "
         "(`InvalidRequestBody`), "
         "`api-version` missing or unsupported, unknown body fields without "
         "`extra-parameters: drop|pass-through` (`ExtraParametersNotAllowed`), a bad "
         "`extra-parameters` or empty `azureml-model-deployment` header (`InvalidHeaderValue`).",
    401: "Credentials missing or invalid, or none configured on the server.",
    404: "Unknown deployment (`ModelNotFound`) or a deployment of the other modality "
         "(`ModalityNotSupported`).",
    413: "Body over the route's byte limit, one image over the decoded-image limit, or OpenAI "
         "token ids whose text is over `EMBEDDINGS_MAX_BODY_BYTES`.",
    415: "A `Content-Type` that is present and not JSON (e.g. `application/x-www-form-urlencoded`, "
         "the default of `curl -d`, PowerShell's `Invoke-RestMethod` and Python's `urllib`: the "
         "message says so), or a `Content-Encoding` other than `identity` (a compressed body).",
    422: "A field of the wrong type or value (`target` is its JSON path, e.g. `input[3]`), too "
         "many items, tokens or pixels (`InvalidParameter`); an input over the deployment's token "
         "limit without truncation (`InputTooLong`); a pass-through extra the deployment does "
         "not know (`UnsupportedParameter`).",
    429: "The process's inference queue is full, or could not finish the request within 3/4 of "
         "`EMBEDDINGS_REQUEST_TIMEOUT_SECONDS` at its measured rate; retry after `Retry-After` "
         "seconds.",
    499: "The request was still unfinished when the time-out its client sent "
         "(`x-stainless-read-timeout`, or `x-stainless-timeout` + 1 s) had passed, and was "
         "cancelled (`ClientClosedRequest`): the client has given up by then.",
    500: "An unexpected failure or a misconfigured server; the message carries only the request "
         "id.",
    503: "The model is missing or failed to load (`ModelUnavailable`), the request waited too "
         "long and was cancelled, an Entra ID token could not be checked, the server is "
         "stopping, or (`GET /health`) every call would be refused for want of usable "
         "credentials (`ServiceUnavailable`): all with `Retry-After`. On any route, without "
         "`Retry-After`: the app cannot load its packages (`ServiceUnavailable`; waiting does "
         "not help, deploy the code again). `x-should-retry: false` where a retry cannot help "
         "(that, or a model file missing or not the one the registry pins).",
}

_NOT_A_ROUTE = "A path that is no route (`NotFound`)."

# Which errors each kind of operation can raise (status -> codes; None = all of that status).
_AZURE_EMBEDDINGS = {400: None, 401: None, 404: ("ModelNotFound", "ModalityNotSupported"),
                     413: None, 415: None, 422: None, 429: None, 499: None, 500: None,
                     503: None}
_AZURE_INFO = {400: ("MissingApiVersionParameter", "UnsupportedApiVersionValue",
                     "InvalidHeaderValue"),
               401: None, 404: ("ModelNotFound",), 422: ("InvalidParameter",), 500: None,
               503: ("ServiceUnavailable",)}
_OPENAI_EMBEDDINGS = {400: ("InvalidRequestBody",), 401: None,
                      404: ("ModelNotFound", "ModalityNotSupported"), 413: None, 415: None,
                      422: ("InvalidParameter", "InputTooLong"), 429: None, 499: None,
                      500: None, 503: None}
_OPENAI_MODELS = {401: None, 500: None, 503: ("ServiceUnavailable",)}
# Every route: the 503 of an app whose packages cannot load (entry.py), auth on or off.
_UNPROTECTED = {500: None, 503: ("ServiceUnavailable",)}

REF = "#/components/"

# A real 8x8 PNG, so the documented image example works as sent.
EXAMPLE_IMAGE = ("data:image/png;base64,iVBORw0KGgoAAAANSUhEUgAAAAgAAAAICAIAAABLbSncAAAAFUlEQVR42"
                 "mM8ISfHgA0wMeAAg1MCANDKARQfGKMRAAAAAElFTkSuQmCC")


def _ref(kind: str, name: str) -> dict[str, str]:
    return {"$ref": f"{REF}{kind}/{name}"}


def _nullable(schema: dict[str, Any]) -> dict[str, Any]:
    out = {**schema, "nullable": True}
    if "enum" in out:
        out["enum"] = [*out["enum"], None]
    return out


def _text_input(description: str, token_ids: str, max_inputs: int,
                lone: dict[str, Any] | None = None) -> dict[str, Any]:
    """A text ``input``: a string (``lone`` if given, else ``TextInput``), token ids (schema
    ``token_ids``), or an array of strings and token ids."""
    one = [_ref("schemas", "TextInput"), _ref("schemas", token_ids)]
    return {"description": description,
            "oneOf": [lone or one[0], one[1],
                      {"type": "array", "minItems": 1, "maxItems": max_inputs,
                       "items": {"oneOf": list(one)}}]}


def _names(deps: list[Deployment]) -> str:
    return "; ".join(
        f"`{d.name}`" + (" (default)" if d.default else "")
        + (f", aliases {', '.join(f'`{a}`' for a in d.aliases)}" if d.aliases else "")
        + f": {d.dimensions} dimensions"
        + (f" (also {', '.join(map(str, d.matryoshka_dimensions))})" if d.matryoshka_dimensions
           else "")
        + (f", {d.max_tokens} tokens per input" if d.max_tokens else "")
        for d in deps) or "none configured"


class _Builder:
    def __init__(self, settings: Settings, registry: Registry):
        self.s = settings
        self.registry = registry
        self.text = [d for d in registry.deployments if d.modality == "text"]
        self.image = [d for d in registry.deployments if d.modality == "image"]
        self.auth = not settings.auth_disabled
        self.components: dict[str, dict[str, Any]] = {
            "schemas": {}, "parameters": {}, "headers": {}, "securitySchemes": {}}

    # -- components -----------------------------------------------------------------------------
    def build_components(self) -> None:
        c = self.components
        c["securitySchemes"] = {
            "ApiKeyAuth": {"type": "apiKey", "in": "header", "name": "api-key",
                           "description": "One of the keys in `EMBEDDINGS_API_KEYS`."},
            "BearerAuth": {"type": "http", "scheme": "bearer",
                           "description": "`Authorization: Bearer <key>` with an API key, or a "
                                          "Microsoft Entra ID access token when the "
                                          "`EMBEDDINGS_ENTRA_*` settings are configured."},
        }
        c["parameters"] = {
            "ApiVersion": {
                "name": "api-version", "in": "query", "required": True,
                "description": "The Azure AI Model Inference API version.",
                "schema": {"type": "string", "enum": list(SUPPORTED_API_VERSIONS)}},
            "ExtraParameters": {
                "name": "extra-parameters", "in": "header", "required": False,
                "description": "What happens to body fields this API does not define: `error` "
                               "(the default) refuses them with 400 `ExtraParametersNotAllowed`, "
                               "`drop` ignores them, `pass-through` hands them to the deployment, "
                               "which refuses those it does not know with 422 "
                               "`UnsupportedParameter`. Text deployments (and the joint "
                               "image+text one, for the items' text) know `truncate`: `\"NONE\"` "
                               "(default), `\"END\"`, `\"START\"`. Case-insensitive.",
                "schema": _ref("schemas", "ExtraParameters")},
            "ModelDeployment": {
                "name": "azureml-model-deployment", "in": "header", "required": False,
                "description": "Selects the deployment, like the body's `model`; if both are "
                               "given they must name the same deployment (else 422).",
                "schema": {"type": "string", "pattern": r"\S"}},
            "ClientRequestId": {
                "name": "x-ms-client-request-id", "in": "header", "required": False,
                "description": "A client id for the request, echoed in the response (only its "
                               "characters `A-Za-z0-9._:-{}`, at most 128).",
                "schema": {"type": "string"}},
        }
        c["headers"] = {
            "RequestId": {"description": "The server's id for this request (also in the log).",
                          "required": True,
                          "schema": {"type": "string", "pattern": "^[0-9a-f]{32}$"}},
            "ClientRequestId": {"description": "The request's `x-ms-client-request-id`, "
                                               "sanitised; absent when none (or nothing usable) "
                                               "was sent.",
                                "required": False,
                                "schema": {"type": "string",
                                           "pattern": r"^[A-Za-z0-9._:{}\-]{1,128}$"}},
            "TotalTime": {"description": "Milliseconds spent serving the request.",
                          "required": True, "schema": {"type": "number", "minimum": 0}},
            "QueueTime": {"description": "Milliseconds the inputs waited in the inference queue.",
                          "required": False, "schema": {"type": "number", "minimum": 0}},
            "InferenceTime": {"description": "Milliseconds of the inference batches that carried "
                                             "the request's inputs.",
                              "required": False, "schema": {"type": "number", "minimum": 0}},
            "RetryAfter": {"description": "Seconds to wait before retrying.", "required": True,
                           "schema": {"type": "integer", "minimum": 1}},
            "RetryAfterOptional": {
                "description": "Seconds to wait before retrying; absent on the 503 of an app "
                               "whose packages cannot load (waiting does not help).",
                "required": False, "schema": {"type": "integer", "minimum": 1}},
            "WWWAuthenticate": {"description": "`Bearer`, or `Bearer error=\"invalid_token\"`.",
                                "required": True,
                                "schema": {"type": "string", "pattern": "^Bearer"}},
        }
        self.build_schemas()

    def build_schemas(self) -> None:
        s = self.s
        text_item = {"type": "string", "minLength": 1,
                     "description": "A text, not empty. Text that is only whitespace gives no "
                                    "token and is embedded as `[CLS] [SEP]`."}
        azure_ids = {"type": "array", "minItems": 1,
                     "items": {"type": "integer", "minimum": 0, "maximum": MAX_TOKEN_ID - 1},
                     "description": "Token ids of the deployment's own tokenizer (WordPiece ids "
                                    "for the MiniLM deployments; ids outside its vocabulary are a "
                                    "422). `[CLS]`/`[SEP]` are added unless the array already "
                                    "starts and ends with them."}
        openai_ids = {"type": "array", "minItems": 1,
                      "items": {"type": "integer", "minimum": 0,
                                "maximum": openai_tokens.SIZE - 1},
                      "description": "OpenAI (cl100k_base) token ids, as OpenAI clients send "
                                     "them: decoded to text, then embedded with the "
                                     "deployment's own tokenizer."}
        limits = (f"At most {s.max_inputs} inputs per request and {s.max_request_tokens} tokens "
                  f"in all (`EMBEDDINGS_MAX_INPUTS`, `EMBEDDINGS_MAX_REQUEST_TOKENS`); each input "
                  f"within its deployment's token limit ({_names(self.text)}) unless truncated.")
        sc = self.components["schemas"]
        sc["TextInput"] = text_item
        sc["TokenIds"] = azure_ids
        sc["OpenAITokenIds"] = openai_ids
        sc["ExtraParameters"] = {"type": "string", "enum": list(EXTRA_MODES)}
        # Nullable enums inline (null in the enum too): 3.0 gives a `$ref` no siblings, and a
        # `nullable` beside an `allOf` would not admit null through the referenced enum.
        common = {
            "dimensions": _nullable({
                "type": "integer", "minimum": 1,
                "description": "Output size: the deployment's native size, or a Matryoshka size "
                               "it declares (other values are a 422)."}),
            "encoding_format": _nullable({
                "type": "string", "enum": list(FORMATS),
                "description": "`float` (default): the L2-normalised float32 vector; `base64`: "
                               "base64 of its little-endian float32 bytes; `uint8`/`int8`: one "
                               "integer per dimension from fixed per-deployment calibration "
                               "ranges; `ubinary`/`binary`: the sign bits packed MSB-first, "
                               "dimensions/8 integers (0..255 / -128..127)."}),
            "input_type": _nullable({
                "type": "string", "enum": list(INPUT_TYPES),
                "description": "`text` (default), `query` or `document`; a deployment may "
                               "prefix a prompt per type."}),
        }
        extras = ("Other fields follow the `extra-parameters` header: refused (400) by default, "
                  "ignored with `drop`, given to the deployment with `pass-through`.")
        sc["EmbeddingsOptions"] = {
            "type": "object", "required": ["input"],
            "description": "The body of `POST /embeddings`. " + extras,
            "properties": {
                "input": _text_input("A string, an array of strings, an array of token ids, or "
                                     "an array of token-id arrays. " + limits, "TokenIds",
                                     s.max_inputs),
                **common,
                "model": _nullable({"type": "string", "pattern": r"\S",
                                    "description": "A text deployment name or alias "
                                                   "(case-insensitive): " + _names(self.text)}),
            },
            "additionalProperties": True,
        }
        sc["ImageEmbeddingInput"] = {
            "type": "object", "required": ["image"], "additionalProperties": False,
            "properties": {
                "image": {"type": "string", "minLength": 1,
                          "description": "A data URL, `data:image/<format>;base64,<data>` "
                                         "(PNG, JPEG, WebP, GIF or BMP; nothing is fetched from "
                                         f"URLs), at most {s.max_image_bytes} bytes decoded and "
                                         f"{s.max_image_pixels} pixels."},
                "text": _nullable({"type": "string", "pattern": r"\S",
                                   "description": "Optional text embedded with the image (joint "
                                                  "deployments only)."}),
            }}
        sc["ImageEmbeddingsOptions"] = {
            "type": "object", "required": ["input"],
            "description": "The body of `POST /images/embeddings` (at most "
                         f"{s.max_image_body_bytes} bytes). " + extras,
            "properties": {
                "input": {"type": "array", "minItems": 1, "maxItems": s.max_image_inputs,
                          "description": f"At most {s.max_request_pixels} pixels in all "
                                         "(`EMBEDDINGS_MAX_REQUEST_PIXELS`).",
                          "items": _ref("schemas", "ImageEmbeddingInput")},
                **common,
                "model": _nullable({"type": "string", "pattern": r"\S",
                                    "description": "An image deployment name or alias "
                                                   "(case-insensitive): " + _names(self.image)}),
            },
            "additionalProperties": True,
        }
        sc["EmbeddingVector"] = {
            "description": "The vector in the requested `encoding_format`: numbers (`float`), a "
                           "base64 string (`base64`), or integers (`int8`, `uint8`, `binary`, "
                           "`ubinary`).",
            "anyOf": [
                {"type": "array", "items": {"type": "number"}},
                {"type": "string", "format": "byte"},
                {"type": "array", "items": {"type": "integer", "minimum": -128, "maximum": 255}},
            ]}
        sc["EmbeddingItem"] = {
            "type": "object", "required": ["index", "object", "embedding"],
            "properties": {"index": {"type": "integer", "minimum": 0},
                           "object": {"type": "string", "enum": ["embedding"]},
                           "embedding": _ref("schemas", "EmbeddingVector")}}
        sc["EmbeddingsUsage"] = {
            "type": "object", "required": ["prompt_tokens", "total_tokens"],
            "description": "Tokens run through the model (special tokens included, padding "
                           "excluded); for images, a fixed count per image plus any text tokens.",
            "properties": {"prompt_tokens": {"type": "integer", "minimum": 0},
                           "total_tokens": {"type": "integer", "minimum": 0}}}
        sc["EmbeddingsResult"] = {
            "type": "object", "required": ["id", "object", "model", "data", "usage"],
            "properties": {
                "id": {"type": "string", "description": "Equals the `x-request-id` header."},
                "object": {"type": "string", "enum": ["list"]},
                "model": {"type": "string"},
                "data": {"type": "array", "items": _ref("schemas", "EmbeddingItem"),
                         "description": "One item per input, in request order."},
                "usage": _ref("schemas", "EmbeddingsUsage")}}
        sc["ModelInfo"] = {
            "type": "object", "required": ["model_name", "model_type", "model_provider_name"],
            "properties": {"model_name": {"type": "string"},
                           "model_type": {"type": "string",
                                          "enum": sorted({d.model_type
                                                          for d in self.registry.deployments})},
                           "model_provider_name": {"type": "string"}}}
        sc["Health"] = {
            "type": "object", "required": ["status", "build", "deployments"],
            "properties": {
                "status": {"type": "string", "enum": ["ok", "degraded"],
                           "description": "`degraded`: some calls fail for the server's "
                                          "reasons (`problems`; the log says why)."},
                "problems": {"type": "array", "items": {"type": "string"}},
                "authentication": {
                    "type": "string", "enum": ["disabled"],
                    "description": "Present while `EMBEDDINGS_AUTH=disabled`: no call needs "
                                   "credentials (the post-deployment check fails on it unless "
                                   "given `--allow-unauthenticated`)."},
                "build": _nullable({
                    "type": "string", "pattern": "^[0-9a-f]{12}$",
                    "description": "Which build of the app answers: a digest of its code, "
                                   "the same as `scripts/smoke_deployed.py` computes from the "
                                   "folder it was deployed from (`null` if it could not be "
                                   "read)."}),
                "deployments": {"type": "array", "items": {
                    "type": "object",
                    "required": ["name", "modality", "dimensions", "loaded", "failed"],
                    "properties": {"name": {"type": "string"},
                                   "modality": {"type": "string", "enum": ["text", "image"]},
                                   "dimensions": {"type": "integer", "minimum": 1},
                                   "loaded": {"type": "boolean"},
                                   "failed": {"type": "boolean",
                                              "description": "Its last load failed."}}}},
                "queue": {"type": "object", "properties": {
                    "requests": {"type": "integer", "minimum": 0},
                    "queued_tokens": {"type": "integer", "minimum": 0},
                    "queued_images": {"type": "integer", "minimum": 0},
                    "preparing_tokens": {
                        "type": "integer", "minimum": 0,
                        "description": "Likely tokens of requests being tokenised: they count "
                                       "against the queue's bound for new arrivals."},
                    "preparing_images": {
                        "type": "integer", "minimum": 0,
                        "description": "Pictures of requests being decoded: they count against "
                                       "the queue's bound for new arrivals."},
                    "tokens_per_second": _nullable({
                        "type": "integer", "minimum": 0,
                        "description": "The text throughput measured on this instance "
                                       "(recent batches); null until measured."})}}}}
        sc["OpenApiDocument"] = {"type": "object", "required": ["openapi", "info", "paths"]}
        sc["Azure.Core.Foundations.Error"] = {
            "type": "object", "required": ["code", "message"],
            "properties": {
                "code": {"type": "string", "description": "Also in the `x-ms-error-code` header."},
                "message": {"type": "string"},
                "target": {"type": "string",
                           "description": "The JSON path, header or parameter at fault."},
                "details": {"type": "array",
                            "items": _ref("schemas", "Azure.Core.Foundations.Error")},
                "innererror": {"type": "object"}}}
        sc["Azure.Core.Foundations.ErrorResponse"] = {
            "type": "object", "required": ["error"],
            "properties": {"error": _ref("schemas", "Azure.Core.Foundations.Error")}}
        # -- OpenAI -------------------------------------------------------------------------------
        sc["CreateEmbeddingRequest"] = {
            "type": "object", "required": ["input"],
            "description": "OpenAI's embeddings request. Other fields (OpenAI's `user`, "
                           "provider-specific ones) are ignored.",
            "properties": {
                "input": _text_input("A string, an array of strings, an array of OpenAI token "
                                     "ids, or an array of such arrays. An empty string is "
                                     "embedded on its own (as `[CLS] [SEP]`; LangChain sends "
                                     "it for an empty document) and refused in an array. "
                                     + limits,
                                     "OpenAITokenIds", s.max_inputs, lone={"type": "string"}),
                "model": _nullable({"type": "string", "pattern": r"\S",
                                    "description": "A text deployment name or alias "
                                                   "(case-insensitive; `GET /v1/models` lists "
                                                   "them): " + _names(self.text)}),
                "encoding_format": _nullable({"type": "string",
                                              "enum": list(dialect_openai.ENCODINGS)}),
                "dimensions": common["dimensions"],
                "user": {"description": "Ignored."},
            },
            "additionalProperties": True,
        }
        sc["Embedding"] = {
            "type": "object", "required": ["object", "index", "embedding"],
            "properties": {"object": {"type": "string", "enum": ["embedding"]},
                           "index": {"type": "integer", "minimum": 0},
                           "embedding": {"anyOf": [
                               {"type": "array", "items": {"type": "number"}},
                               {"type": "string", "format": "byte"}]}}}
        sc["CreateEmbeddingResponse"] = {
            "type": "object", "required": ["object", "data", "model", "usage"],
            "properties": {"object": {"type": "string", "enum": ["list"]},
                           "data": {"type": "array", "items": _ref("schemas", "Embedding")},
                           "model": {"type": "string",
                                     "description": "The deployment's name."},
                           "usage": _ref("schemas", "EmbeddingsUsage")}}
        sc["Model"] = {
            "type": "object", "required": ["id", "object", "created", "owned_by"],
            "properties": {"id": {"type": "string"},
                           "object": {"type": "string", "enum": ["model"]},
                           "created": {"type": "integer"},
                           "owned_by": {"type": "string"}}}
        sc["ListModelsResponse"] = {
            "type": "object", "required": ["object", "data"],
            "properties": {"object": {"type": "string", "enum": ["list"]},
                           "data": {"type": "array", "items": _ref("schemas", "Model")}}}
        sc["OpenAI.Error"] = {
            "type": "object", "required": ["message", "type", "param", "code"],
            "properties": {"message": {"type": "string"},
                           "type": {"type": "string"},
                           "param": {"type": "string", "nullable": True,
                                     "description": "The JSON path of the field at fault."},
                           "code": {"type": "string", "nullable": True}}}
        sc["OpenAI.ErrorResponse"] = {
            "type": "object", "required": ["error"],
            "properties": {"error": _ref("schemas", "OpenAI.Error")}}

    # -- responses ------------------------------------------------------------------------------
    @staticmethod
    def _common_headers() -> dict[str, Any]:
        return {"x-request-id": _ref("headers", "RequestId"),
                "x-ms-client-request-id": _ref("headers", "ClientRequestId"),
                "x-total-time": _ref("headers", "TotalTime")}

    def ok(self, description: str, schema: str, timing: bool = False) -> dict[str, Any]:
        headers = self._common_headers()
        if timing:
            headers["x-queue-time"] = _ref("headers", "QueueTime")
            headers["x-inference-time"] = _ref("headers", "InferenceTime")
        return {"description": description, "headers": headers,
                "content": {"application/json": {"schema": _ref("schemas", schema)}}}

    def errors(self, dialect: str, table: dict[int, tuple[str, ...] | None]) -> dict[str, Any]:
        """Error responses of one operation: per status, its body shape and headers."""
        by_status: dict[int, dict[str, Any]] = {}
        for azure_status, allowed in table.items():
            if not self.auth and azure_status == 401:
                continue
            for code in allowed or ERROR_CODES[azure_status]:
                exc = errors.ApiError(azure_status, code, "")
                if dialect == "openai":
                    status, _, body = dialect_openai.render_error(exc)
                    wire_code, wire_type = body["error"]["code"], body["error"]["type"]
                else:
                    status, wire_code, wire_type = azure_status, code, None
                entry = by_status.setdefault(status, {"azure": [], "codes": [], "types": [],
                                                      "when": []})
                for key, value in (("azure", code), ("codes", wire_code), ("types", wire_type)):
                    if value is not None and value not in entry[key]:
                        entry[key].append(value)
                when = _NOT_A_ROUTE if code == "NotFound" else _WHEN[azure_status]
                if when not in entry["when"]:
                    entry["when"].append(when)
        out: dict[str, Any] = {}
        for status in sorted(by_status):
            e = by_status[status]
            headers = {**self._common_headers(),
                       "x-ms-error-code": {"description": "The error code (Azure's spelling).",
                                           "required": True,
                                           "schema": {"type": "string", "enum": e["azure"]}}}
            if status == 401:
                headers["WWW-Authenticate"] = _ref("headers", "WWWAuthenticate")
            if status == 429:
                headers["Retry-After"] = _ref("headers", "RetryAfter")
            elif status == 503:
                headers["Retry-After"] = _ref("headers", "RetryAfterOptional")
            if dialect == "openai":
                schema = {"allOf": [_ref("schemas", "OpenAI.ErrorResponse"), {
                    "type": "object", "properties": {"error": {"type": "object", "properties": {
                        "type": {"type": "string", "enum": e["types"]},
                        "code": {"type": "string", "enum": e["codes"]}}}}}]}
            else:
                schema = {"allOf": [_ref("schemas", "Azure.Core.Foundations.ErrorResponse"), {
                    "type": "object", "properties": {"error": {"type": "object", "properties": {
                        "code": {"type": "string", "enum": e["codes"]}}}}}]}
            out[str(status)] = {
                "description": " ".join(e["when"]) + " Codes: "
                               + ", ".join(f"`{c}`" for c in e["codes"]) + ".",
                "headers": headers, "content": {"application/json": {"schema": schema}}}
        return out

    # -- operations, one builder per ROUTES handler ---------------------------------------------
    def _azure_params(self, *extra: dict[str, Any]) -> list[dict[str, Any]]:
        return [_ref("parameters", "ApiVersion"), *extra, _ref("parameters", "ClientRequestId")]

    @staticmethod
    def _body(schema: str, description: str, example: dict[str, Any]) -> dict[str, Any]:
        return {"required": True, "description": description,
                "content": {"application/json": {"schema": _ref("schemas", schema),
                                                 "example": example}}}

    def _azure_embeddings_op(self, operation_id: str, summary: str, body_limit: str,
                             schema: str, what: str, example: dict[str, Any]) -> dict[str, Any]:
        """An Azure embeddings operation (``body_limit``: the setting bounding its body)."""
        max_bytes = {"EMBEDDINGS_MAX_BODY_BYTES": self.s.max_text_body_bytes,
                     "EMBEDDINGS_MAX_IMAGE_BODY_BYTES": self.s.max_image_body_bytes}[body_limit]
        return {
            "operationId": operation_id, "tags": ["Azure AI Model Inference"],
            "summary": summary,
            "description": f"Body at most {max_bytes} bytes (`{body_limit}`).",
            "parameters": self._azure_params(_ref("parameters", "ExtraParameters"),
                                             _ref("parameters", "ModelDeployment")),
            "requestBody": self._body(schema, what, example),
            "responses": {"200": self.ok("The embeddings, in request order.",
                                         "EmbeddingsResult", timing=True),
                          **self.errors("azure", _AZURE_EMBEDDINGS)}}

    def azure_embeddings(self) -> dict[str, Any]:
        return self._azure_embeddings_op(
            "getEmbeddings", "Text embeddings", "EMBEDDINGS_MAX_BODY_BYTES", "EmbeddingsOptions",
            "The texts or token ids to embed.",
            {"input": ["This is a very good text"], "input_type": "query",
             "encoding_format": "float"})

    def azure_image_embeddings(self) -> dict[str, Any]:
        return self._azure_embeddings_op(
            "getImageEmbeddings", "Image embeddings (an image, optionally with text, per input)",
            "EMBEDDINGS_MAX_IMAGE_BODY_BYTES", "ImageEmbeddingsOptions", "The images to embed.",
            {"input": [{"image": EXAMPLE_IMAGE, "text": "a red square"}],
             "encoding_format": "float"})

    def azure_info(self) -> dict[str, Any]:
        return {
            "operationId": "getModelInfo", "tags": ["Azure AI Model Inference"],
            "summary": "The selected deployment's model",
            "description": "The deployment named by `model` or `azureml-model-deployment` (any "
                           "modality), else the default text deployment.",
            "parameters": self._azure_params(
                {"name": "model", "in": "query", "required": False,
                 "description": "A deployment name or alias (surrounding spaces ignored; "
                                "blank is a 422): " + _names(self.registry.deployments),
                 "schema": {"type": "string", "minLength": 1}},
                _ref("parameters", "ModelDeployment")),
            "responses": {"200": self.ok("The model.", "ModelInfo"),
                          **self.errors("azure", _AZURE_INFO)}}

    def health_status(self) -> dict[str, Any]:
        return {
            "operationId": "getHealth", "tags": ["Service"], "summary": "Liveness",
            "description": "Cheap; never loads a model. No authentication. 503 while every "
                           "call would be refused (no usable credentials), or while the app "
                           "cannot load its packages.",
            "security": [],
            "parameters": [_ref("parameters", "ClientRequestId")],
            "responses": {"200": self.ok("The deployments and the inference queue.", "Health"),
                          **self.errors("azure", _UNPROTECTED)}}

    def openai_embeddings(self) -> dict[str, Any]:
        return {
            "operationId": "createEmbedding", "tags": ["OpenAI"],
            "summary": "Text embeddings, OpenAI's wire format",
            "description": "No `api-version`. OpenAI's error shape and statuses (a validation "
                           "error is a 400). The same text gives the same vectors as "
                           "`POST /embeddings`.",
            "parameters": [_ref("parameters", "ClientRequestId")],
            "requestBody": self._body("CreateEmbeddingRequest", "The texts or token ids to embed.",
                                      {"input": ["This is a very good text"],
                                       "encoding_format": "float"}),
            "responses": {"200": self.ok("The embeddings, in request order.",
                                         "CreateEmbeddingResponse", timing=True),
                          **self.errors("openai", _OPENAI_EMBEDDINGS)}}

    def azure_openai_embeddings(self) -> dict[str, Any]:
        op = self.openai_embeddings()
        op["operationId"] = "createAzureOpenAIEmbedding"
        op["summary"] = "Text embeddings, Azure OpenAI's path"
        op["description"] = ("What the `AzureOpenAI` client calls: the deployment is in the path "
                             "(a body `model` is ignored, as on Azure OpenAI). "
                             + op["description"])
        # A segment that is not one deployment name ('a/b', '.', '') leaves the route: the
        # catch-all answers it, 404 `not_found`.
        op["responses"] = {**op["responses"], **self.errors("openai", {
            404: ("ModelNotFound", "ModalityNotSupported", "NotFound")})}
        op["parameters"] = [
            {"name": "deployment", "in": "path", "required": True,
             "description": "A text deployment name or alias (one path segment): "
                            + _names(self.text),
             "schema": {"type": "string", "pattern": "^[^/]+$"}},
            {"name": "api-version", "in": "query", "required": False,
             "description": "Sent by Azure OpenAI clients; ignored.", "schema": {"type": "string"}},
            *op["parameters"]]
        return op

    def openai_models(self) -> dict[str, Any]:
        return {
            "operationId": "listModels", "tags": ["OpenAI"], "summary": "The text deployments",
            "parameters": [_ref("parameters", "ClientRequestId")],
            "responses": {"200": self.ok("The text deployments.", "ListModelsResponse"),
                          **self.errors("openai", _OPENAI_MODELS)}}

    def openai_model(self) -> dict[str, Any]:
        return {
            "operationId": "retrieveModel", "tags": ["OpenAI"],
            "summary": "One text deployment (the openai SDK's `models.retrieve`)",
            "parameters": [
                {"name": "model", "in": "path", "required": True,
                 "description": "A text deployment name or alias (case-insensitive): "
                                + _names(self.text) + ". The answer's `id` is the deployment's "
                                "name. A '/' in an alias is sent percent-encoded (%2F), as the "
                                "openai SDK does.",
                 "schema": {"type": "string", "minLength": 1}},
                _ref("parameters", "ClientRequestId")],
            "responses": {"200": self.ok("The deployment.", "Model"),
                          **self.errors("openai", {**_OPENAI_MODELS, 404: ("ModelNotFound",)})}}

    def openapi(self) -> dict[str, Any]:
        return {
            "tags": ["Service"], "summary": "This document (OpenAPI 3.0)",
            "description": "No authentication.", "security": [],
            "parameters": [_ref("parameters", "ClientRequestId")],
            "responses": {"200": self.ok("The OpenAPI document.", "OpenApiDocument"),
                          **self.errors("azure", _UNPROTECTED)}}


def document(settings: Settings, registry: Registry) -> dict[str, Any]:
    """The OpenAPI document of a service with these settings and this registry."""
    from .service import ROUTES  # the service imports this module lazily; no cycle at import

    b = _Builder(settings, registry)
    b.build_components()
    paths: dict[str, dict[str, Any]] = {}
    for route in ROUTES.values():
        build = getattr(b, route.handler, None)
        if build is None:
            raise RuntimeError(f"openapi: no operation for route /{route.template}")
        for method in route.methods:
            if method == "HEAD":   # implied by GET (RFC 9110), and one operationId per operation
                continue
            op = build()
            if route.handler == "openapi" or route.template.startswith("openai/v1/"):
                # Routes that share a handler: one operationId each, from the path.
                op["operationId"] = ("get" if method == "GET" else "create") + "".join(
                    p.capitalize() for p in route.template.replace(".", " ").replace("/", " ")
                    .replace("{", "").replace("}", "").split())
            paths.setdefault("/" + route.template, {})[method.lower()] = op
    auth = [] if settings.auth_disabled else [{"ApiKeyAuth": []}, {"BearerAuth": []}]
    return {
        "openapi": OPENAPI_VERSION,
        "info": {
            "title": "Embeddings API",
            "version": "1.0",
            "description": (
                "Embeddings in two wire dialects over one pipeline: Azure AI Model Inference "
                f"(`api-version` {', '.join(SUPPORTED_API_VERSIONS)}; errors are Azure.Core's "
                "`{\"error\": {\"code\", \"message\", \"target\"?, \"details\"?}}` with "
                "`x-ms-error-code`) and OpenAI's (`/v1/...` and `/openai/deployments/...`; errors "
                "`{\"error\": {\"message\", \"type\", \"param\", \"code\"}}`). Routes and methods "
                "not listed here are answered 404/405 in the path's dialect (OpenAI's under "
                "`/v1` and `/openai`), 405 with an `Allow` header. Deployments: text: "
                + _names(b.text) + ". Images: " + _names(b.image) + "."),
            "license": {"name": "MIT"},
        },
        "servers": [{"url": "/"}],
        "security": auth,
        "tags": [{"name": "Azure AI Model Inference"}, {"name": "OpenAI"}, {"name": "Service"}],
        "paths": paths,
        "components": b.components,
    }
