"""The one error type of the service, and its mapping to HTTP.

Every failure a client can see is an :class:`ApiError`. The HTTP layer turns it into Azure.Core's
error body ``{"error": {"code", "message", "target"?, "details"?}}`` with the header
``x-ms-error-code``; nothing else ever reaches the wire (no stack traces, no server paths).
"""

from __future__ import annotations

import re
import traceback
from dataclasses import dataclass, field
from typing import Any


@dataclass(eq=False)
class ApiError(Exception):
    status: int
    code: str
    message: str
    target: str | None = None
    details: list[dict[str, Any]] | None = None
    headers: dict[str, str] = field(default_factory=dict)
    # InputTooLong: (the input's tokens, the model's limit, whether the count is a lower bound),
    # which the OpenAI dialect words as OpenAI does.
    context_length: tuple[int, int, bool] | None = None

    def __post_init__(self) -> None:
        super().__init__(self.message)

    def body(self) -> dict[str, Any]:
        err: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.target is not None:
            err["target"] = self.target
        if self.details:
            err["details"] = self.details
        return {"error": err}

    def response_headers(self) -> dict[str, str]:
        return {"x-ms-error-code": self.code, **self.headers}


# Constructors, one per error the contract names. Keeping them here keeps codes and statuses in
# one place.

def invalid_body(message: str) -> ApiError:
    return ApiError(400, "InvalidRequestBody", message)


def missing_api_version(supported: tuple[str, ...], openai_twin: bool = True,
                        spelled: str | None = None) -> ApiError:
    """``spelled``: the name of a query parameter that is api-version in another case."""
    return ApiError(
        400, "MissingApiVersionParameter",
        "The api-version query parameter is required. Supported values: " + ", ".join(supported)
        + "." + (f" Query parameter names are case-sensitive: this request has "
                 f"'{clip(spelled, 32)}', not 'api-version'." if spelled else "")
        + (" (OpenAI clients: use the base URL ending in /v1, whose routes need none.)"
           if openai_twin else ""),
        target="api-version")


def unsupported_api_version(value: str, supported: tuple[str, ...]) -> ApiError:
    return ApiError(
        400, "UnsupportedApiVersionValue",
        f"Unsupported api-version '{clip(value)}'. Supported values: " + ", ".join(supported) + ".",
        target="api-version")


def extra_parameters_not_allowed(names: list[str]) -> ApiError:
    shown = ", ".join(f"'{clip(n)}'" for n in names[:20])
    if len(names) > 20:
        shown += f" and {len(names) - 20} more"
    return ApiError(
        400, "ExtraParametersNotAllowed",
        "Unknown parameter(s) " + shown
        + ". Send the header 'extra-parameters: drop' to ignore them or 'pass-through' to hand "
        "them to the model.",
        target=clip(names[0]) if len(names) == 1 else None,
        details=[{"code": "ExtraParameterNotAllowed", "message": f"Unknown parameter '{clip(n)}'.",
                  "target": clip(n)} for n in names[:20]] if len(names) > 1 else None)


def invalid_header(name: str, message: str) -> ApiError:
    return ApiError(400, "InvalidHeaderValue", message, target=name)


def unauthorized(message: str, *, invalid_token: bool = False) -> ApiError:
    challenge = 'Bearer error="invalid_token"' if invalid_token else "Bearer"
    return ApiError(401, "Unauthorized", message, headers={"WWW-Authenticate": challenge})


def auth_unavailable(retry_after: int) -> ApiError:
    return ApiError(503, "ServiceUnavailable",
                    "The identity provider's signing keys could not be fetched, so the access "
                    "token could not be checked. Retry after the indicated delay.",
                    headers={"Retry-After": str(retry_after)})


def model_not_found(name: str, available: list[str], known: tuple[str, ...] = ()) -> ApiError:
    """``available``: the deployments to list; ``known``: every name and alias the route takes,
    for a "did you mean" when ``name`` is a near miss of one (an alias is not listed)."""
    import difflib

    near = (difflib.get_close_matches(name.lower(), [k.lower() for k in known], n=1, cutoff=0.8)
            if len(name) <= 128 else [])
    guess = next((k for k in known if near and k.lower() == near[0]), None)
    return ApiError(
        404, "ModelNotFound",
        f"No deployment named '{clip(name)}'. "
        + (f"Did you mean '{guess}'? " if guess else "")
        + ("Available: " + ", ".join(available) + "." if available else "None is configured."),
        target="model")


def modality_not_supported(name: str, route: str, modality: str) -> ApiError:
    return ApiError(
        404, "ModalityNotSupported",
        f"Deployment '{clip(name)}' serves {modality} embeddings and cannot be used on {route}.",
        target="model")


def payload_too_large(size: int, limit: int, target: str | None = None) -> ApiError:
    return ApiError(413, "PayloadTooLarge",
                    f"Request body is {size} bytes; the limit is {limit} bytes.", target=target)


def unsupported_media_type(content_type: str) -> ApiError:
    hint = ""
    if content_type.split(";", 1)[0].strip().lower() == "application/x-www-form-urlencoded":
        # the default of curl's -d and --data-raw, PowerShell's Invoke-RestMethod and Python's
        # urllib with a body: the commonest cause by far
        hint = (" (the default of curl -d, PowerShell's Invoke-RestMethod and Python's urllib: "
                "with curl add -H 'Content-Type: application/json' or use --json)")
    return ApiError(415, "UnsupportedMediaType",
                    f"Content-Type '{clip(content_type)}' is not supported; send application/json"
                    f"{hint}.")


def unsupported_content_encoding(encoding: str) -> ApiError:
    return ApiError(415, "UnsupportedMediaType",
                    f"Content-Encoding '{clip(encoding)}' is not supported; send the body "
                    "uncompressed.")


def validation(message: str, target: str | None = None, code: str = "InvalidParameter") -> ApiError:
    return ApiError(422, code, message, target=target)


def unsupported_parameter(message: str, target: str | None = None) -> ApiError:
    return ApiError(422, "UnsupportedParameter", message,
                    target=clip(target) if target is not None else None)


# How to get an over-long input embedded on the Azure route (the OpenAI dialect replaces it).
TRUNCATE_HINT = ("Shorten it or send \"truncate\": \"END\" with 'extra-parameters: pass-through' "
                 "(azure-ai-inference: model_extras={\"truncate\": \"END\"}).")


def input_too_long(index_target: str, tokens: int, limit: int, at_least: bool = False) -> ApiError:
    return ApiError(
        422, "InputTooLong",
        f"The input has {'at least ' if at_least else ''}{tokens} tokens; the model accepts at most {limit} (special tokens "
        "included). " + TRUNCATE_HINT,
        target=index_target, context_length=(tokens, limit, at_least))


def too_many_requests(retry_after: int) -> ApiError:
    return ApiError(429, "TooManyRequests",
                    "The server is busy with other requests; retry after the indicated delay.",
                    headers={"Retry-After": str(retry_after)})


def client_stopped_waiting(seconds: float) -> ApiError:
    """A request cancelled when the time its client said it waits had passed (the client has
    given up: its time-out, api.CLIENT_TIMEOUT_HEADERS). 499 as nginx answers a client that
    closed the request: for the logs and telemetry, not a server error (the client has gone)."""
    return ApiError(499, "ClientClosedRequest",
                    f"The request did not finish within the {seconds:g} seconds the client waits "
                    "(its time-out, sent as x-stainless-read-timeout or x-stainless-timeout) and "
                    "was cancelled; raise the client's time-out or send fewer inputs.")


def internal(request_id: str) -> ApiError:
    return ApiError(500, "InternalServerError",
                    f"The server failed to process the request. Request id: {request_id}.")


# On an answer a retry cannot change (the deployment itself is wrong until it is fixed): the
# openai SDK, and the frameworks and litellm built on it, obey it and fail at once instead of
# sending the request twice more, each a billed execution (the header is not standard; azure-core
# ignores it).
NO_RETRY = {"x-should-retry": "false"}


def misconfigured(request_id: str, lasting: bool = True) -> ApiError:
    """``lasting``: the settings or registry are wrong, not merely unreadable this moment."""
    return ApiError(500, "InternalServerError",
                    "The server's configuration is invalid (a setting or the deployment "
                    f"registry); its log names the problem. Request id: {request_id}.",
                    headers=dict(NO_RETRY) if lasting else {})


def model_unavailable(name: str, retry_after: int, lasting: bool = False) -> ApiError:
    """``lasting``: the model's file is missing or not the one the registry pins (the package is
    wrong; the server still tries it again after ``retry_after``, clients need not)."""
    message = (f"The model of deployment '{clip(name)}' is not available: its files are missing "
               "or not the ones this deployment pins, which a redeployment fixes, not a retry "
               "(the server's log names the file)." if lasting else
               f"The model of deployment '{clip(name)}' is not available right now.")
    return ApiError(503, "ModelUnavailable", message,
                    headers={"Retry-After": str(retry_after), **(NO_RETRY if lasting else {})})


class DeadlinePassed(Exception):
    """Raised while a request is prepared (its pictures decoded) once its deadline has passed:
    the pipeline answers it as a request that timed out (499 for the client's time-out, else
    503), without decoding what no one will read."""


_SAFE_ID = re.compile(r"[^A-Za-z0-9._:\-{}]")


def safe_client_request_id(value: str | None) -> str | None:
    """``x-ms-client-request-id`` as every answer echoes it (``service.run_request``, and
    ``entry`` while the packages cannot load): visible ASCII id characters only, ≤ 128."""
    if not value:
        return None
    cleaned = _SAFE_ID.sub("", value[:256])[:128]
    return cleaned or None


def chain_has(exc: BaseException, kind: type) -> bool:
    """Whether ``exc`` or an exception it was raised from or during is a ``kind``."""
    seen: set[int] = set()
    cur: BaseException | None = exc
    while cur is not None and id(cur) not in seen:
        if isinstance(cur, kind):
            return True
        seen.add(id(cur))
        cur = cur.__cause__ or cur.__context__
    return False


def clip(value: object, limit: int = 80) -> str:
    """Echo client-supplied text back safely: bounded length, printable only.

    Only ever looks at the first ``limit`` characters; a non-string value is first described
    by :func:`describe` (never serialised whole)."""
    text = value if isinstance(value, str) else describe(value)
    head = text[:limit]
    head = "".join(ch if ch.isprintable() else "?" for ch in head)
    return head if len(text) <= limit else head[: limit - 1] + "…"


def describe(value: object) -> str:
    """A short, bounded description of a client JSON value: scalars as JSON, containers by kind.

    Never recurses and never serialises a container, so no input (however deep or large) can
    make an error message expensive or fail."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value) if -10**30 < value < 10**30 else "a very large integer"
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, str):
        return '"' + value[:60] + ('…"' if len(value) > 60 else '"')
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__


def free_frames(exc: BaseException) -> None:
    """Drop the locals of the finished frames that ``exc``'s traceback, and the exceptions it
    chains, hold (a decoder's picture, a request's bytes), so an exception kept a while holds
    no memory beyond itself. The traceback's lines stay for logging."""
    seen: set[int] = set()
    e: BaseException | None = exc
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        traceback.clear_frames(e.__traceback__)
        e = e.__cause__ or e.__context__
