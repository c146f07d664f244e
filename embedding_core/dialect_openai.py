"""The OpenAI dialect: ``POST /v1/embeddings``, ``GET /v1/models`` (and the Azure OpenAI path).

What text-embeddings-inference, vLLM, infinity and Ollama serve, so OpenAI clients work with only
a base URL: no api-version, ``Authorization: Bearer`` (or ``api-key``), OpenAI's request fields
(``input`` as a string, strings, or OpenAI token-id arrays; ``model``; ``encoding_format``
float|base64; ``dimensions``; ``user``), response and error shape. Unknown fields are ignored,
as OpenAI-compatible servers do (clients send ``user`` and provider-specific fields); an input
over the deployment's token limit is refused, or truncated if the server says so
(``EMBEDDINGS_OPENAI_TRUNCATE``: ``END`` or ``START``). On
``/openai/deployments/{deployment}/embeddings`` the path names the deployment and the body's
``model`` is ignored, as on Azure OpenAI.

Token-id arrays are **OpenAI (cl100k_base) ids**, because that is what OpenAI clients send: they
are decoded to text (``openai_tokens.py``) and embedded with the deployment's own tokenizer, so
``usage`` counts the deployment's tokens. The same text gives bit-identical vectors here and on
the Azure route: both parse into the same request model and run the same pipeline.

Errors are ``{"error": {"message", "type", "param", "code"}}`` with OpenAI's statuses (a
validation error is a 400, not a 422).
"""

from __future__ import annotations

import re
from typing import Any

from . import errors, openai_tokens, schema
from .api import ApiRequest
from .pipeline import EmbeddingsResult
from .registry import Deployment
from .settings import Settings

NAME = "openai"
ENCODINGS = ("float", "base64")

# Our codes that have a well-known OpenAI spelling; the rest become snake_case.
_CODES = {"Unauthorized": "invalid_api_key", "ModelNotFound": "model_not_found",
          "TooManyRequests": "rate_limit_exceeded", "InternalServerError": "internal_error"}
_TYPES = {401: "invalid_request_error", 429: "requests", 500: "server_error",
          503: "server_error"}


def parse_embeddings(req: ApiRequest, settings: Settings,
                     deployment: str | None = None) -> schema.EmbeddingsRequest:
    schema.check_content_type(req.headers)
    doc = schema.parse_body(req.body, settings.max_text_body_bytes, settings.max_inputs,
                            headers=req.headers)
    if "input" not in doc:
        raise errors.validation("'input' is required.", "input")
    inputs = schema.text_inputs(doc["input"], settings.max_inputs,
                                max_token_id=openai_tokens.SIZE, lone_empty_string=True)
    lone = schema.is_lone_input(doc["input"])
    try:
        texts = openai_tokens.decode_inputs(inputs, settings.max_text_body_bytes,
                                            "EMBEDDINGS_MAX_BODY_BYTES")
    except errors.ApiError as err:
        raise schema.relocate_lone(err) if lone else err from None
    model = schema.model_field(doc.get("model"))
    return schema.EmbeddingsRequest(
        inputs=texts, modality="text",
        dimensions=doc.get("dimensions"),       # checked with the deployment (pipeline)
        encoding_format=schema.encoding_field(doc.get("encoding_format"), ENCODINGS),
        # On the Azure OpenAI path the URL names the deployment and, as on Azure OpenAI, the
        # body's `model` does not choose it: clients send an OpenAI model name there whatever
        # the deployment (LangChain's AzureOpenAIEmbeddings: text-embedding-ada-002).
        model=None if deployment is not None else model,
        deployment=deployment, deployment_source="deployment",
        # OpenAI's request has no truncation field: the server's setting decides (as TEI's
        # --auto-truncate), and is the Azure route's default ("NONE": refuse) unless set.
        extras={} if settings.openai_truncate == "NONE" else {"truncate": settings.openai_truncate},
        lone=lone)


def render_embeddings(result: EmbeddingsResult, request_id: str) -> dict[str, Any]:
    return {
        "object": "list",
        "data": [{"object": "embedding", "index": i, "embedding": v}
                 for i, v in enumerate(result.values)],
        "model": result.deployment.name,
        "usage": {"prompt_tokens": result.prompt_tokens, "total_tokens": result.prompt_tokens},
    }


def render_model(d: Deployment) -> dict[str, Any]:
    return {"id": d.name, "object": "model", "created": 0, "owned_by": d.provider or "self"}


def render_models(deployments: list[Deployment]) -> dict[str, Any]:
    return {"object": "list",
            "data": [render_model(d) for d in deployments if d.modality == "text"]}


def _snake(code: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", code).lower()


# A request on this dialect cannot ask for truncation: an over-long input's error says what can.
_NO_TRUNCATION = ("Shorten it (frameworks: split documents into chunks of at most ~150 words): "
                  "this route does not truncate unless the server sets "
                  "EMBEDDINGS_OPENAI_TRUNCATE to END or START (the Azure route truncates on "
                  "request: POST /embeddings?api-version=2024-05-01-preview with the header "
                  "'extra-parameters: pass-through' and the body field truncate set to END).")
# (No double quote in it: clients match OpenAI's wording in the str() of the error body, whose
# repr escapes the apostrophe of "model's" once the text also holds a double quote.)


def render_error(exc: errors.ApiError) -> tuple[int, dict[str, str], dict[str, Any]]:
    status = 400 if exc.status == 422 else exc.status
    message = exc.message
    if exc.code == "InputTooLong":
        message = message.replace(errors.TRUNCATE_HINT, _NO_TRUNCATION)
        if exc.context_length is not None:
            # OpenAI's wording, which clients match to tell a context-window error from other
            # 400s (litellm's ContextWindowExceededError, which its fallbacks catch).
            tokens, limit, at_least = exc.context_length
            message = (f"This model's maximum context length is {limit} tokens, however you "
                       f"requested {'at least ' if at_least else ''}{tokens} tokens"
                       f" ({exc.target + ', ' if exc.target else ''}special tokens included). "
                       + message.split(". ", 1)[1])
    body = {"error": {
        "message": message,
        "type": _TYPES.get(status, "invalid_request_error" if status < 500 else "server_error"),
        "param": exc.target,
        "code": _CODES.get(exc.code, _snake(exc.code)),
    }}
    return status, exc.response_headers(), body
