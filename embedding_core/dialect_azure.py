"""The Azure AI Model Inference dialect: parse its requests, render its results and errors.

Requests carry ``api-version``, the ``extra-parameters`` and ``azureml-model-deployment``
headers; token-id inputs are the deployment's own ids. Errors are Azure.Core's
``{"error": {"code", "message", "target"?, "details"?}}`` with ``x-ms-error-code``.
"""

from __future__ import annotations

from typing import Any

from . import errors, schema
from .api import ApiRequest
from .pipeline import EmbeddingsResult
from .registry import Deployment
from .settings import Settings

NAME = "azure"


def parse_embeddings(req: ApiRequest, modality: str, settings: Settings) -> schema.EmbeddingsRequest:
    schema.check_api_version(req.query, openai_twin=modality == "text")  # no OpenAI image route
    extra_mode = schema.extra_parameters_mode(req.headers)
    header_model = schema.model_deployment_header(req.headers)
    schema.check_content_type(req.headers)
    text = modality == "text"
    max_items = settings.max_inputs if text else settings.max_image_inputs
    doc = schema.parse_body(req.body, settings.max_text_body_bytes if text
                            else settings.max_image_body_bytes, max_items, numbers=not text,
                            headers=req.headers)
    request = schema.parse_request(doc, modality=modality, extra_mode=extra_mode,
                                   max_items=max_items)
    request.deployment = header_model
    return request


def parse_info(req: ApiRequest) -> tuple[str | None, str | None]:
    """``/info``: the deployment named by ``?model=`` and/or ``azureml-model-deployment``
    (either one checked and trimmed as in a request body)."""
    schema.check_api_version(req.query)
    return schema.model_field(req.query.get("model")), schema.model_deployment_header(req.headers)


def render_embeddings(result: EmbeddingsResult, request_id: str) -> dict[str, Any]:
    return {
        "id": request_id, "object": "list", "model": result.deployment.model_name,
        "data": [{"index": i, "object": "embedding", "embedding": v}
                 for i, v in enumerate(result.values)],
        "usage": {"prompt_tokens": result.prompt_tokens, "total_tokens": result.prompt_tokens},
    }


def render_info(dep: Deployment) -> dict[str, Any]:
    return {"model_name": dep.model_name, "model_type": dep.model_type,
            "model_provider_name": dep.provider}


def render_error(exc: errors.ApiError) -> tuple[int, dict[str, str], dict[str, Any]]:
    return exc.status, exc.response_headers(), exc.body()
