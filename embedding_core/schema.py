"""Wire schema: the request body and headers of the embeddings routes, validated.

Turns raw bytes and headers into an :class:`EmbeddingsRequest` or raises ``ApiError`` with the
status, code and JSON-path ``target`` the contract names. Knows nothing about models beyond the
sets of values a field may take.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import orjson

from . import errors
from .encodings import FORMATS
from .registry import INPUT_TYPES
from .settings import SUPPORTED_API_VERSIONS

MAX_TOKEN_ID = 2**31  # beyond any vocabulary; each deployment checks its own size

KNOWN_FIELDS = ("input", "dimensions", "encoding_format", "input_type", "model")
EXTRA_MODES = ("error", "drop", "pass-through")


@dataclass(frozen=True)
class ImageInput:
    image: str
    text: str | None = None


@dataclass
class EmbeddingsRequest:
    """The one request model both wire dialects parse into (see ``pipeline.py``)."""

    inputs: list[Any]                  # text: str | list[int] (deployment ids); image: ImageInput
    modality: str = "text"
    dimensions: Any = None             # as sent: checked with the deployment (check_dimensions)
    encoding_format: str = "float"
    input_type: str = "text"
    model: str | None = None           # the body's `model`
    deployment: str | None = None      # a deployment named outside the body (header or URL path)
    deployment_source: str = "azureml-model-deployment"
    extras: dict[str, Any] = field(default_factory=dict)
    # `input` was one string or one token-id array, not an array of them: an error about it
    # targets `input` (`input[3]` for its 4th id), not the `input[0]` of the list it became.
    lone: bool = False


# -- headers and query ----------------------------------------------------------------------------

def check_api_version(query: Mapping[str, str], openai_twin: bool = True) -> str:
    """``openai_twin``: the route has an OpenAI counterpart under /v1 (the error says so)."""
    value = query.get("api-version")
    if value and "," in value:
        # The same parameter twice (a base URL that has it, and a client that adds it again)
        # reaches us joined with commas: the one value if they agree.
        values = {v.strip() for v in value.split(",")}
        if len(values) == 1:
            value = values.pop()
    if value is None or value == "":
        spelled = next((k for k in query if k.lower() == "api-version" and k != "api-version"),
                       None) if value is None else None
        raise errors.missing_api_version(SUPPORTED_API_VERSIONS, openai_twin, spelled)
    if value not in SUPPORTED_API_VERSIONS:
        raise errors.unsupported_api_version(value, SUPPORTED_API_VERSIONS)
    return value


def extra_parameters_mode(headers: Mapping[str, str]) -> str:
    raw = headers.get("extra-parameters")
    if raw is None:
        return "error"
    value = raw.strip().lower()
    if value not in EXTRA_MODES:
        raise errors.invalid_header(
            "extra-parameters",
            f"Header 'extra-parameters' has value '{errors.clip(raw)}'; allowed values: "
            + ", ".join(EXTRA_MODES) + ".")
    return value


def model_deployment_header(headers: Mapping[str, str]) -> str | None:
    raw = headers.get("azureml-model-deployment")
    if raw is None:
        return None
    value = raw.strip()
    if not value:
        raise errors.invalid_header("azureml-model-deployment",
                                    "Header 'azureml-model-deployment' must not be empty.")
    return value


def check_content_type(headers: Mapping[str, str]) -> None:
    """The body's media type, and its content coding: none (``identity``). Neither the Functions
    host nor the local host decompresses a request body, so a compressed one would otherwise
    be refused as "not valid UTF-8", or, under a coding that happens to decode, misread."""
    coding = headers.get("content-encoding")
    if coding is not None and any(c.strip().lower() not in ("", "identity")
                                  for c in coding.split(",")):
        raise errors.unsupported_content_encoding(coding)
    raw = headers.get("content-type")
    if raw is None or not raw.strip():
        return
    media = raw.split(";", 1)[0].strip().lower()
    if media != "application/json" and not (media.startswith("application/") and media.endswith("+json")):
        raise errors.unsupported_media_type(raw)


# -- body -----------------------------------------------------------------------------------------

# Strings, arrays and objects cost memory out of proportion to their bytes once parsed: an 8 MiB
# body of empty arrays becomes 243 MB of Python objects (nested ones 303 MB, two-letter strings
# 149 MB; the same bytes of prose 19 MB), and each instance parses as many bodies at once as its
# HTTP concurrency (8 at 2048 MB in infra/). A valid request holds a few of them per input, so a
# body with more than any valid request is refused before it is parsed. On the text routes
# numbers are not counted (OpenAI token arrays hold any number of them; at most ~120 MB per
# 8 MiB); the image route, whose valid bodies hold almost none, counts them too (a 32 MiB body
# of numbers had cost 449 MB), bounded by the commas between them.
JSON_VALUES_MIN = 65_536
JSON_VALUES_PER_INPUT = 8     # an image input with text is an object and four strings
# A string (to its closing quote, or to the end of an unterminated one: no match that starts can
# fail, so the scan is linear whatever the body), or the start of an array or object (or a comma).
_STRING_OR_OPEN = re.compile(rb'"(?:[^"\\]++|\\.)*+(?:"|\\?\Z)|[\[{]', re.DOTALL)
_STRING_OPEN_OR_COMMA = re.compile(rb'"(?:[^"\\]++|\\.)*+(?:"|\\?\Z)|[\[{,]', re.DOTALL)
# The quick count's bytes: one bytes.translate pass, 64 KiB at a time, keeps only these, instead
# of one bytes.count pass per byte value: 10.5-11.8 against 29-46 ms for a 24.5 MB image body
# (four values: the image route counts commas), AMD EPYC VM, 2026-11-24.
_QUICK_BYTES = b'"[{,'
_NOT_QUICK_BYTES = bytes(sorted(set(range(256)) - set(_QUICK_BYTES)))
_QUICK_CHUNK = 1 << 16


def _quick_counts(body: bytes) -> dict[int, int]:
    """How many of each of :data:`_QUICK_BYTES` ``body`` holds (by byte value)."""
    counts = dict.fromkeys(_QUICK_BYTES, 0)
    for start in range(0, len(body), _QUICK_CHUNK):
        kept = body[start:start + _QUICK_CHUNK].translate(None, _NOT_QUICK_BYTES)
        for byte in _QUICK_BYTES:
            counts[byte] += kept.count(byte)
    return counts


def check_json_values(body: bytes, max_inputs: int, *, numbers: bool = False,
                      bound: int | None = None) -> None:
    """400 if ``body`` holds more JSON strings, arrays and objects (and commas, ``numbers``)
    than ``bound``, by default what requests of ``max_inputs`` inputs can hold. Counted without
    parsing: quotes, brackets (and commas) give an upper bound, and only a body over it is
    scanned, strings skipped whole, until the bound is passed."""
    if bound is None:
        bound = max(JSON_VALUES_MIN, JSON_VALUES_PER_INPUT * max_inputs + 1024)
    counts = _quick_counts(body)
    quick = (counts[ord('"')] + 1) // 2 + counts[ord("[")] + counts[ord("{")]
    if numbers:
        quick += counts[ord(",")]
    if quick <= bound:
        return
    for n, _ in enumerate((_STRING_OPEN_OR_COMMA if numbers else _STRING_OR_OPEN)
                          .finditer(body), 1):
        if n > bound:
            what = ("strings, arrays, objects and commas" if numbers
                    else "strings, arrays and objects")
            raise errors.invalid_body(
                f"The request body holds more than {bound:,} JSON {what}; a request has at "
                f"most {max_inputs:,} inputs, a few values each. Send fewer inputs per request.")


def parse_body(body: bytes, limit: int, max_inputs: int, *, numbers: bool = False,
               headers: Mapping[str, str] | None = None) -> dict[str, Any]:
    """The body's JSON object; ``limit``: its bytes (413 above); ``max_inputs`` and
    ``numbers``: see :func:`check_json_values` (400); ``headers`` (lower-case names): to say why
    a body sent in chunks may arrive empty."""
    if len(body) > limit:
        raise errors.payload_too_large(len(body), limit)
    if not body.strip():
        hint = ""
        if not body and "chunked" in (headers or {}).get("transfer-encoding", "").lower():
            # azure-functions-host passes a body on to the worker only when the request has a
            # Content-Length (GrpcMessageConversionExtensions.ToRpcHttp; `func start` drops
            # chunked bodies: azure-functions-host#4926, azure-functions-python-worker#574).
            hint = (" It was sent with 'Transfer-Encoding: chunked', which the Azure Functions "
                    "host does not always pass on to the function: send it with a "
                    "Content-Length (a body of known length).")
        raise errors.invalid_body("The request body is empty; send a JSON object." + hint)
    check_json_values(body, max_inputs, numbers=numbers)
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        try:
            body.decode("utf-8")
        except UnicodeDecodeError:
            raise errors.invalid_body("The request body is not valid UTF-8.") from None
        raise errors.invalid_body(f"The request body is not valid JSON: {exc.msg} "
                                  f"(line {exc.lineno}, column {exc.colno}).") from None
    if not isinstance(doc, dict):
        raise errors.invalid_body("The request body must be a JSON object.")
    return doc


def _is_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _got(x: Any) -> str:
    """What a bad value was, bounded: "null", "an array", "a very large integer", or its type
    and its value as JSON (a string quoted and clipped)."""
    text = errors.clip(errors.describe(x))
    if x is None or text.startswith(("a ", "an ")):
        return text
    return f"{_type_name(x)} {text}"


def _type_name(x: Any) -> str:
    return {dict: "object", list: "array", str: "string", bool: "boolean", int: "integer",
            float: "number", type(None): "null"}.get(type(x), type(x).__name__)


def is_lone_input(value: Any) -> bool:
    """Whether a text ``input`` is one string or one token-id array (an array whose first item
    is a number), which the service embeds as a list of one."""
    return isinstance(value, str) or (
        isinstance(value, list) and bool(value) and isinstance(value[0], (int, float))
        and not isinstance(value[0], bool))


def relocate_lone(err: errors.ApiError) -> errors.ApiError:
    """An error about item 0 of a lone input, retargeted at the request's own JSON path:
    ``input[0]`` → ``input``, ``input[0][3]`` → ``input[3]``."""
    if err.target == "input[0]" or (err.target or "").startswith("input[0]["):
        err.target = "input" + err.target[len("input[0]"):]
        err.message = err.message.replace("input[0]", "input")   # e.g. "the ids up to input[0]"
    return err


def text_inputs(value: Any, max_items: int, max_token_id: int = MAX_TOKEN_ID, *,
                lone_empty_string: bool = False) -> list[str | list[int]]:
    """A string, an array of strings, an array of token ids, or an array of token-id arrays.

    An empty string is refused, except as the whole ``input`` with ``lone_empty_string`` (OpenAI
    embeds ``"input": ""`` and refuses ``""`` in an array). Text that is only whitespace is
    embedded, as sentence-transformers and OpenAI do (``[CLS] [SEP]``). Errors target the
    request's JSON paths (:func:`relocate_lone`)."""
    if not is_lone_input(value):
        return _text_items(value, max_items, max_token_id)
    if isinstance(value, str) and not value and lone_empty_string:
        return [value]
    try:
        return _text_items([value], max_items, max_token_id)   # its ids are checked there
    except errors.ApiError as err:
        raise relocate_lone(err) from None


def _text_items(value: Any, max_items: int, max_token_id: int) -> list[str | list[int]]:
    if not isinstance(value, list):
        raise errors.validation(
            "'input' must be a string, an array of strings, an array of token ids or an array "
            f"of token-id arrays (got {_type_name(value)}).", "input")
    if not value:
        raise errors.validation("'input' must contain at least one item.", "input")
    if len(value) > max_items:
        raise errors.validation(f"'input' has {len(value)} items; the limit is {max_items}.", "input")
    for i, item in enumerate(value):
        if isinstance(item, str):
            if not item:
                raise errors.validation(f"input[{i}] is an empty string; each text must have at "
                                        "least one character.", f"input[{i}]")
        elif isinstance(item, list):
            if not item:
                raise errors.validation("A token-id array must not be empty.", f"input[{i}]")
            # C-speed checks first (type(True) is bool, so booleans fail here too).
            if not (all(type(tok) is int for tok in item) and 0 <= min(item)
                    and max(item) < max_token_id):
                j, tok = next((j, t) for j, t in enumerate(item)
                              if type(t) is not int or not 0 <= t < max_token_id)
                # The Azure route's deployments check their own vocabularies later (the bound
                # here is only a sanity one): no range that the next check would contradict.
                bound = ("non-negative integers, ids of the deployment's vocabulary"
                         if max_token_id == MAX_TOKEN_ID else
                         f"integers from 0 to {max_token_id - 1} (cl100k_base: 0..100255, "
                         "or a special token id)")
                raise errors.validation(f"Token ids must be {bound} (got {_got(tok)}).",
                                        f"input[{i}][{j}]")
        else:
            hint = (" Images go to POST /images/embeddings?api-version=2024-05-01-preview (an "
                    "Azure AI Model Inference route; OpenAI's API has no image embeddings)."
                    if isinstance(item, dict) and "image" in item else "")
            raise errors.validation(
                f"Each input must be a string or an array of token ids (got {_type_name(item)})."
                + hint, f"input[{i}]")
    return value


def _image_inputs(value: Any, max_items: int) -> list[ImageInput]:
    if not isinstance(value, list):
        raise errors.validation(
            f"'input' must be an array of {{\"image\", \"text\"?}} objects (got {_type_name(value)}).",
            "input")
    if not value:
        raise errors.validation("'input' must contain at least one item.", "input")
    if len(value) > max_items:
        raise errors.validation(f"'input' has {len(value)} items; the limit is {max_items}.", "input")
    out = []
    for i, item in enumerate(value):
        if not isinstance(item, dict):
            raise errors.validation(
                f"Each input must be an object with 'image' (got {_type_name(item)}).", f"input[{i}]")
        unknown = sorted(set(item) - {"image", "text"})
        if unknown:
            raise errors.validation(f"Unknown field '{errors.clip(unknown[0])}' in an image input; "
                                    "an item is {\"image\": \"data:image/<format>;base64,...\"} "
                                    "with an optional \"text\".",
                                    f"input[{i}].{errors.clip(unknown[0])}")
        image = item.get("image")
        if not isinstance(image, str) or not image:
            raise errors.validation("'image' must be a non-empty data URL string "
                                    "(data:image/<format>;base64,<data>).", f"input[{i}].image")
        text = item.get("text")
        if text is not None and (not isinstance(text, str) or not text.strip()):
            # Unlike a text input, blank text here would pull the image's vector towards the
            # vector of no words: refused, with what to do instead.
            raise errors.validation(
                "'text' must be a string with words in it when given (got "
                f"{'blank text' if isinstance(text, str) else _got(text)}); omit 'text' to "
                "embed the image alone.", f"input[{i}].text")
        out.append(ImageInput(image, text))
    return out


def parse_request(doc: dict[str, Any], *, modality: str, extra_mode: str,
                  max_items: int) -> EmbeddingsRequest:
    unknown = [k for k in doc if k not in KNOWN_FIELDS]
    # A missing `input` first: with {"inputs": ...} the unknown field is the misspelt one, and
    # the header that would ignore it only leads to this error.
    if "input" not in doc:
        raise errors.validation("'input' is required" + (
            f" (the body has {', '.join(repr(errors.clip(k)) for k in unknown[:3])})."
            if unknown else "."), "input")
    if unknown and extra_mode == "error":
        raise errors.extra_parameters_not_allowed(unknown)
    extras = {k: doc[k] for k in unknown} if extra_mode == "pass-through" else {}
    inputs = (text_inputs if modality == "text" else _image_inputs)(doc["input"], max_items)
    dimensions = doc.get("dimensions")     # checked with the deployment (check_dimensions)
    encoding = encoding_field(doc.get("encoding_format"), FORMATS)

    input_type = doc.get("input_type")
    if input_type is None:
        input_type = "text"
    if not isinstance(input_type, str) or input_type not in INPUT_TYPES:
        raise errors.validation("'input_type' must be one of " + ", ".join(INPUT_TYPES) + ".",
                                "input_type")

    return EmbeddingsRequest(modality=modality, inputs=inputs, dimensions=dimensions,
                             encoding_format=encoding, input_type=input_type,
                             model=model_field(doc.get("model")), extras=extras,
                             lone=modality == "text" and is_lone_input(doc["input"]))


def check_dimensions(dimensions: Any, deployment: str, supported: Sequence[int]) -> int | None:
    """The body's ``dimensions`` (null or a positive integer), checked once the deployment is
    known, so that a wrong one is told the sizes it may send."""
    if dimensions is not None and (not _is_int(dimensions) or dimensions <= 0):
        raise errors.validation(
            f"'dimensions' must be a positive integer (got {_got(dimensions)}); deployment "
            f"'{deployment}' supports: " + ", ".join(map(str, supported)) + ".", "dimensions")
    return dimensions


def encoding_field(encoding: Any, allowed: tuple[str, ...]) -> str:
    if encoding is None:
        return "float"
    if not isinstance(encoding, str) or encoding not in allowed:
        raise errors.validation("'encoding_format' must be one of " + ", ".join(allowed) + ".",
                                "encoding_format")
    return encoding


def model_field(model: Any) -> str | None:
    if model is not None and (not isinstance(model, str) or not model.strip()):
        raise errors.validation("'model' must be a deployment name (a non-empty string).", "model")
    return model.strip() if model else None
