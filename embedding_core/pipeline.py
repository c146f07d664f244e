"""The embeddings pipeline: one request model in, one result out, whatever the wire dialect.

``EmbeddingsRequest`` (parsed by a dialect) → deployment → output size and encoding checks →
the backend prepares the inputs in this thread (tokenise / decode) → the request-size cap → the
inference queue (batched with other requests, see ``inference_queue.py``) → the backend finishes
the vectors → Matryoshka size → wire encoding. Dialects only parse and render.
"""

from __future__ import annotations

import functools
import time
from dataclasses import dataclass, field
from typing import Any

from . import errors, schema
from .encodings import CALIBRATED, PACKED, encode, resize
from .inference_queue import InferenceQueue, check_request_cost
from .registry import Deployment, Registry
from .schema import EmbeddingsRequest
from .settings import Settings


@dataclass
class EmbeddingsResult:
    deployment: Deployment
    values: list[Any]           # one encoded value per input, in request order
    prompt_tokens: int
    encoding_format: str
    dimensions: int


@dataclass
class Trace:
    """What one request did, filled in as it goes (timing headers and telemetry read it)."""

    request_id: str
    started: float = field(default_factory=time.perf_counter)   # when the request arrived
    route: str = ""
    dialect: str = ""
    caller: str | None = None
    deployment: str | None = None
    inputs: int | None = None
    images: int | None = None
    tokens: int | None = None
    encoding: str | None = None
    dimensions: int | None = None
    queue_s: float | None = None
    inference_s: float | None = None
    client_timeout_s: float | None = None   # how long the client waits (api.ApiRequest)


def least_cost(request: EmbeddingsRequest) -> dict[str, int]:
    """A lower bound of what a request will queue: every text input is at least 3 tokens
    ([CLS], one token, [SEP]); every image is one image."""
    if request.modality == "image":
        return {"images": len(request.inputs)}
    return {"tokens": 3 * len(request.inputs)}


def likely_cost(request: EmbeddingsRequest, max_tokens: int | None) -> dict[str, int]:
    """An estimate of what a request will queue, before tokenising: about four characters a
    token in English prose, plus [CLS] and [SEP]; token arrays as they are; at most the
    deployment's limit per input, at least the lower bound (:func:`least_cost`). It sets the
    precheck's ``Retry-After`` and what the request holds against later prechecks while it is
    prepared; admission itself is decided on the real cost."""
    if request.modality == "image":
        return {"images": len(request.inputs)}
    cap = (max_tokens or 1 << 30) + 2
    return {"tokens": sum(max(3, min(cap, (len(x) // 4 if isinstance(x, str) else len(x)) + 2))
                          for x in request.inputs)}


class Pipeline:
    def __init__(self, settings: Settings, registry: Registry, queue: InferenceQueue):
        self.settings = settings
        self.registry = registry
        self.queue = queue

    def select(self, request: EmbeddingsRequest, route: str) -> Deployment:
        return self.registry.select(request.modality, route, request.model, request.deployment,
                                    header_name=request.deployment_source)

    def embed(self, request: EmbeddingsRequest, route: str, trace: Trace) -> EmbeddingsResult:
        s = self.settings
        dep = self.select(request, route)
        trace.deployment = dep.name
        dims = schema.check_dimensions(request.dimensions, dep.name,
                                       dep.supported_dimensions) or dep.dimensions
        trace.encoding, trace.dimensions = request.encoding_format, dims
        if dims not in dep.supported_dimensions:
            raise errors.validation(
                f"Deployment '{dep.name}' does not support dimensions={dims}; supported: "
                + ", ".join(map(str, dep.supported_dimensions)) + ".", "dimensions")
        if request.encoding_format in PACKED and dims % 8:
            raise errors.validation(
                f"encoding_format '{request.encoding_format}' needs dimensions divisible by 8 "
                f"(got {dims}).", "encoding_format")
        ranges = None
        if request.encoding_format in CALIBRATED:
            calibration = self.registry.calibration(dep)
            ranges = calibration.get(dims) if calibration else None
            if ranges is None:
                raise errors.validation(
                    f"Deployment '{dep.name}' has no {request.encoding_format} calibration for "
                    f"{dims} dimensions.", "encoding_format")

        backend = self.registry.backend(dep)
        extras = backend.check_extras(request.extras)
        # A full queue refuses before any tokenising or decoding is paid for.
        likely = likely_cost(request, dep.max_tokens)
        if "tokens" in likely:              # more is refused after tokenising (422)
            likely["tokens"] = min(likely["tokens"], s.max_request_tokens)
        client = trace.client_timeout_s
        # Pictures are not decoded past the request's deadline (its client's time-out, if
        # sooner): the client has gone, or the answer would be the time-out's 503 anyway.
        by_client = client is not None and client < s.request_timeout_s
        deadline = trace.started + (client if by_client else s.request_timeout_s)
        held = self.queue.precheck(least_cost(request), likely)
        preparing_since, took = time.perf_counter(), None
        try:
            prepared = backend.prepare(request.inputs, input_type=request.input_type,
                                       extras=extras, deadline=deadline)
            took = time.perf_counter() - preparing_since
        except errors.ApiError as err:
            raise schema.relocate_lone(err) if request.lone else err from None
        except errors.DeadlinePassed:
            raise (errors.client_stopped_waiting(client) if by_client
                   else self.queue.timed_out(s.request_timeout_s)) from None
        finally:
            self.queue.prepared(held, took)
        trace.inputs = prepared.inputs
        check_request_cost(prepared, s.max_request_tokens)
        elapsed = time.perf_counter() - trace.started
        left = s.request_timeout_s - elapsed
        # A client that says how long it waits (the OpenAI SDKs do) has gone once that has
        # passed: its job is admitted with that deadline (api.ApiRequest.client_timeout_s) and
        # cancelled then (499), so no one pays for rows no one reads; one that could not finish
        # within it even alone is refused at once (422, which the SDKs do not retry).
        gone = None
        wait_s = left
        if client is not None and client - elapsed < left:
            wait_s = client - elapsed
            gone = functools.partial(errors.client_stopped_waiting, client)
            if wait_s <= 0:
                raise gone()
        job = self.queue.start(prepared, left, s.request_timeout_s, wait_s=wait_s,
                               client_s=client if gone else None)
        try:
            outputs = self.queue.wait(job, wait_s, s.request_timeout_s, on_timeout=gone)
        finally:   # a request that queued and then failed (503 time-out) still reports them
            trace.queue_s, trace.inference_s = job.queue_s, job.inference_s
        result = prepared.finish(outputs)
        trace.images = prepared.images   # counted as embedded only once they were
        if result.vectors.shape[1] != dep.dimensions:   # a registry entry that is wrong: a 500
            raise RuntimeError(
                f"deployment {dep.name} declares {dep.dimensions} dimensions but its model gives "
                f"{result.vectors.shape[1]}: fix 'dimensions' in the registry")
        trace.tokens = result.prompt_tokens
        values = encode(resize(result.vectors, dims), request.encoding_format, ranges)
        return EmbeddingsResult(dep, values, result.prompt_tokens, request.encoding_format, dims)
