"""Image backends: EfficientNet-Lite0 features, and ConSE vectors in MiniLM's text space.

* :class:`ImageFeatureBackend` (kind ``image-onnx``): the network's 1280-d global-average-pooled
  features, L2-normalised. Image only: an item with ``text`` is refused.
* :class:`ConseBackend` (kind ``image-conse``): "convex combination of semantic embeddings"
  (Norouzi et al., 2014). The softmax over the 1000 ImageNet classes is cut to its ``top_t``
  most probable classes, renormalised, and used to weight the rows of a fixed matrix holding the
  text deployment's embedding of each class name (``class_matrix``, made by
  ``scripts/build_conse_matrix.py``). The result lives in the text deployment's space, so texts
  from ``/embeddings`` and images from ``/images/embeddings`` can be compared directly. With
  ``text``, the item's vector is ``normalize((1 - w) * image + w * text)`` with
  ``w = options.text_weight`` (0.5: the two unit vectors count equally).

Both decode every image first (so a bad item fails the request before any inference), keep only
the 224x224 model input per image, and run the network in micro-batches of
``min(options.batch_size, settings.max_batch_size)`` images, so memory is bounded by the batch
size and the request's item limit. ``usage.prompt_tokens`` counts ``options.image_tokens`` per
image plus the text tokens actually run through the text model.

Deployments that name the same model file (same sha256) and the same onnxruntime settings share
one session per process.
"""

from __future__ import annotations

import logging
import re
import threading
from typing import Any, Sequence

import numpy as np

from . import decode_helpers, errors, images
from .backends import Encoded, Prepared, Work, run_inline
from .onnx_session import create_session, release_arena_when_idle
from .pooling import l2_normalize
from .registry import Deployment, FileRef
from .settings import Settings
from .text import check_truncate_extras

log = logging.getLogger(__name__)

DEFAULT_IMAGE_TOKENS = 49      # the 7x7 positions of the final feature map that are pooled
DEFAULT_BATCH_SIZE = 8         # images per inference call (throughput is flat above ~2 on CPU)

_sessions: dict[tuple, Any] = {}
_sessions_lock = threading.Lock()


def session_key(ref: FileRef, settings: Settings) -> tuple:
    return (str(ref.path), ref.sha256, settings.session_threads,
            settings.ort_inter_op_threads, settings.ort_optimization_level, settings.ort_spinning)


def shared_session(ref: FileRef, settings: Settings):
    """One onnxruntime session per (model file, sha256, runtime settings) in this process."""
    key = session_key(ref, settings)
    with _sessions_lock:
        session = _sessions.get(key)
        if session is None:
            session = create_session(ref.verified(), settings, spin=False)
            _sessions[key] = session
            inp = session.get_inputs()[0]
            release_arena_when_idle(session, {inp.name: np.zeros(
                (1, 3, images.CROP_TO, images.CROP_TO), dtype=np.float32)}, settings)
        return session


class ImageLane:
    """The queue's Lane for one output of one image model: batches of [3, 224, 224] pixels.

    Deployments that share a model file and output share the lane (and so their batches)."""

    unit = "images"

    def __init__(self, session: Any, key: tuple, input_name: str, output: str, batch_size: int):
        self.session = session
        self.key = ("image", key, output, batch_size)
        self.input_name = input_name
        self.output = output
        self.max_batch_items = batch_size
        self.batch_budget = batch_size

    def run(self, payloads: Sequence[np.ndarray], requests: int = 1) -> np.ndarray:
        return self.session.run([self.output], {self.input_name: np.stack(payloads)})[0]


# -- pure functions (also used by the build and calibration scripts) -----------------------------

def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits.astype(np.float64) - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def conse_vectors(logits: np.ndarray, class_matrix: np.ndarray, top_t: int) -> np.ndarray:
    """ConSE: L2-normalised, renormalised-probability-weighted mean of the ``top_t`` most
    probable classes' rows of ``class_matrix`` ([classes, dims], unit rows)."""
    p = softmax(logits)
    t = max(1, min(int(top_t), p.shape[1]))
    top = np.argpartition(-p, t - 1, axis=1)[:, :t] if t < p.shape[1] else \
        np.broadcast_to(np.arange(p.shape[1]), p.shape)
    w = np.take_along_axis(p, top, axis=1)
    w /= w.sum(axis=1, keepdims=True)
    v = np.einsum("nt,ntd->nd", w, class_matrix[top].astype(np.float64))
    return l2_normalize(v)


def combine(image_vecs: np.ndarray, text_vecs: np.ndarray, text_weight: float) -> np.ndarray:
    """``normalize((1 - w) * image + w * text)`` for unit vectors (w = 0.5: equal weight)."""
    mixed = (1.0 - text_weight) * image_vecs.astype(np.float64) + text_weight * text_vecs
    return l2_normalize(mixed)


# -- backends -------------------------------------------------------------------------------------

class ImageModel:
    """What both image backends hold: the shared session, decoding, and lanes per output."""

    def __init__(self, deployment: Deployment, settings: Settings):
        self.deployment = deployment
        self.settings = settings
        opts = deployment.options
        self.image_tokens = int(opts.get("image_tokens", DEFAULT_IMAGE_TOKENS))
        self.batch_size = max(1, min(int(opts.get("batch_size", DEFAULT_BATCH_SIZE)),
                                     settings.max_batch_size))
        images.ensure_pillow_limit(settings.max_image_pixels)
        self.session = shared_session(deployment.files["model"], settings)
        self.input_name = opts.get("input", "pixel_values")
        names = [i.name for i in self.session.get_inputs()]
        if names != [self.input_name]:
            raise ValueError(f"{deployment.name}: model inputs {names}, expected [{self.input_name}]")

    def pixel_values(self, inputs: Sequence[Any],
                     deadline: float | None = None) -> list[np.ndarray]:
        """Decode and preprocess every item (this thread and the helpers, ``decode_helpers``;
        the first bad item in request order is the error), once the request's pixels in all
        are known to be within ``EMBEDDINGS_MAX_REQUEST_PIXELS``; none after ``deadline``
        (``errors.DeadlinePassed``)."""
        images.check_request_pixels([item.image for item in inputs], self.settings)
        return decode_helpers.helpers(self.settings).map(
            lambda i, item, checkpoint: images.image_to_pixel_values(
                item.image, self.settings, i, checkpoint=checkpoint), inputs, deadline)

    def lane(self, output: str) -> ImageLane:
        return ImageLane(self.session, session_key(self.deployment.files["model"], self.settings),
                         self.input_name, output, self.batch_size)

    def work(self, pixels: Sequence[np.ndarray], output: str) -> Work:
        return Work(self.lane(output), list(pixels), [1] * len(pixels))

    def outputs(self, pixels: Sequence[np.ndarray], output: str) -> np.ndarray:
        """One output for all images, run here in micro-batches (scripts and tests)."""
        prepared = Prepared([self.work(pixels, output)], lambda out: Encoded(out[0], 0))
        return run_inline(prepared).vectors


class ImageFeatureBackend:
    """EfficientNet-Lite0 pooled features (``options.output``, default ``embedding``)."""

    def __init__(self, deployment: Deployment, settings: Settings, registry: Any = None):
        self.deployment = deployment
        self.registry = registry
        self.model = ImageModel(deployment, settings)
        self.output = deployment.options.get("output", "embedding")
        log.info("loaded image deployment %s", deployment.name)

    def loaded(self) -> bool:
        return True

    def encode(self, inputs: Sequence[Any], *, input_type: str = "text",
               extras: dict[str, Any] | None = None) -> Encoded:
        return run_inline(self.prepare(inputs, input_type=input_type, extras=extras or {}))

    def check_extras(self, extras: dict[str, Any]) -> dict[str, Any]:
        for key in extras:
            raise errors.unsupported_parameter(
                f"Parameter '{errors.clip(key)}' is not supported by deployment "
                f"'{self.deployment.name}'; it accepts no extra parameters.", target=key)
        return {}

    def _joint_deployments(self) -> list[str]:
        deps = getattr(self.registry, "deployments", ()) or ()
        return [d.name for d in deps if d.modality == "image" and d.backend == "image-conse"]

    def prepare(self, inputs: Sequence[Any], *, input_type: str = "text",
                extras: dict[str, Any] | None = None, deadline: float | None = None) -> Prepared:
        for i, item in enumerate(inputs):
            if item.text is not None:
                joint = self._joint_deployments()
                hint = f" Use deployment '{joint[0]}' to embed an image together with text." \
                    if joint else ""
                raise errors.unsupported_parameter(
                    f"Deployment '{self.deployment.name}' embeds images only; 'text' is not "
                    f"supported.{hint}", target=f"input[{i}].text")
        pixels = self.model.pixel_values(inputs, deadline)
        tokens = len(inputs) * self.model.image_tokens
        return Prepared([self.model.work(pixels, self.output)],
                        lambda outputs: Encoded(l2_normalize(outputs[0]), tokens),
                        inputs=len(inputs), images=len(inputs))


_INDEX = re.compile(r"^input\[(\d+)\]")


class ConseBackend:
    """ImageNet class probabilities -> a vector in the text deployment's space (+ optional text)."""

    def __init__(self, deployment: Deployment, settings: Settings, registry: Any = None):
        self.deployment = deployment
        self.model = ImageModel(deployment, settings)
        opts = deployment.options
        self.top_t = int(opts.get("top_t", 5))
        self.text_weight = float(opts.get("text_weight", 0.5))
        if not 0.0 <= self.text_weight <= 1.0:
            raise ValueError(f"{deployment.name}: text_weight must be in [0, 1]")
        self.logits_output = opts.get("output", "logits")
        outputs = {o.name: o for o in self.model.session.get_outputs()}
        if self.logits_output not in outputs:
            raise ValueError(f"{deployment.name}: the model has no output {self.logits_output!r}")
        n_classes = outputs[self.logits_output].shape[-1]
        matrix = np.load(deployment.files["class_matrix"].verified(), allow_pickle=False)
        if matrix.ndim != 2 or matrix.shape[1] != deployment.dimensions or (
                isinstance(n_classes, int) and matrix.shape[0] != n_classes):
            raise ValueError(f"{deployment.name}: class matrix shape {matrix.shape} does not fit "
                             f"{n_classes} classes x {deployment.dimensions} dimensions")
        self.class_matrix = np.ascontiguousarray(matrix, dtype=np.float32)
        if registry is None:
            raise ValueError(f"{deployment.name}: needs the registry to find its text deployment")
        text_dep = registry.find(opts.get("text_deployment", ""))
        if text_dep is None or text_dep.modality != "text" or text_dep.dimensions != deployment.dimensions:
            raise ValueError(f"{deployment.name}: options.text_deployment must name a text "
                             f"deployment of {deployment.dimensions} dimensions")
        self.text_backend = registry.backend(text_dep)
        log.info("loaded image deployment %s (ConSE, top %d, text via %s)", deployment.name,
                 self.top_t, text_dep.name)

    def loaded(self) -> bool:
        return True

    def encode(self, inputs: Sequence[Any], *, input_type: str = "text",
               extras: dict[str, Any] | None = None) -> Encoded:
        return run_inline(self.prepare(inputs, input_type=input_type, extras=extras or {}))

    def check_extras(self, extras: dict[str, Any]) -> dict[str, Any]:
        return check_truncate_extras(extras, self.deployment.name, " (for the items' text)")

    def _text_ids(self, inputs: Sequence[Any], input_type: str, truncate: str):
        idx = [i for i, item in enumerate(inputs) if item.text is not None]
        if not idx:
            return idx, []
        try:
            ids = self.text_backend.tokenize([inputs[i].text for i in idx],
                                             input_type=input_type, truncate=truncate)
        except errors.ApiError as exc:
            m = _INDEX.match(exc.target or "")
            if m:   # the text backend's index is into our text list: point at the item's text
                exc.target = f"input[{idx[int(m.group(1))]}].text"
            raise
        for i, row in zip(idx, ids):
            # Text of characters the tokenizer drops (U+200B, controls, lone combining marks)
            # pulls the image's vector towards no words, as blank text would (schema refuses
            # that): the same refusal.
            if not self.text_backend.body_tokens(row, input_type):
                raise errors.validation(
                    "'text' must be a string with words in it when given (got text without any "
                    "token: only characters the tokenizer drops); omit 'text' to embed the "
                    "image alone.", f"input[{i}].text")
        return idx, ids

    def prepare(self, inputs: Sequence[Any], *, input_type: str = "text",
                extras: dict[str, Any] | None = None, deadline: float | None = None) -> Prepared:
        truncate = (extras or {}).get("truncate", "NONE")
        # The text first: it is cheap, and a bad one is reported before any image is decoded.
        idx, ids = self._text_ids(inputs, input_type, truncate)
        pixels = self.model.pixel_values(inputs, deadline)
        tokens = len(inputs) * self.model.image_tokens + int(sum(len(x) for x in ids))
        work = [self.model.work(pixels, self.logits_output)]
        if idx:   # the items' text runs on the text deployment's lane, batched with its traffic
            work.append(self.text_backend.work(ids))

        def finish(outputs: list[np.ndarray]) -> Encoded:
            vecs = conse_vectors(outputs[0], self.class_matrix, self.top_t)
            if idx:
                vecs[idx] = combine(vecs[idx], outputs[1], self.text_weight)
            return Encoded(vecs, tokens)
        return Prepared(work, finish, inputs=len(inputs), images=len(inputs))
