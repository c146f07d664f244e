"""The deployment registry: deployments and their models described as data.

``registry.json`` beside this module lists the deployments; ``EMBEDDINGS_REGISTRY`` points at a
replacement file. A deployment names its backend kind, its files (each with size and sha256,
verified when the model loads), native dimensions, Matryoshka sizes, token limit, prompt prefixes
per ``input_type``, and the int8/uint8 calibration ranges.

Backends are created lazily, on first use, once per process, under a lock: importing this module
(or ``function_app``) never loads a model.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import json
import logging
import math
import re
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from . import errors
from .backends import Backend
from .settings import Settings

log = logging.getLogger(__name__)

DEFAULT_REGISTRY = Path(__file__).with_name("registry.json")
MODALITIES = ("text", "image")
INPUT_TYPES = ("text", "query", "document")

# Backend kinds -> "module:factory". Imported only when a deployment of that kind first loads.
BACKEND_KINDS: dict[str, str] = {
    "text-onnx": "embedding_core.text:TextBackend",
    "image-onnx": "embedding_core.image_backend:ImageFeatureBackend",
    "image-conse": "embedding_core.image_backend:ConseBackend",
}
# A failed load is tried again after EMBEDDINGS_RETRY_AFTER_SECONDS, and after twice the last
# wait each time it fails the same way, up to this (note_load_failure).
LOAD_RETRY_MAX_S = 60.0


def load_retry_after(failed_until: dict[str, float], key: str, retry_s: int) -> int | None:
    """The Retry-After of a 503 for ``key`` while its failed load is remembered (the seconds
    until it is tried again, at least ``retry_s``), or None once it may be tried."""
    left = failed_until.get(key, 0.0) - time.monotonic()
    return max(retry_s, math.ceil(left)) if left > 0 else None


def load_failed(name: str, failed_until: dict[str, float],
                history: dict[str, tuple[str, float, bool]], key: str,
                retry_s: int) -> errors.ApiError | None:
    """The 503 of deployment ``name`` while the failed load of its ``key`` is remembered (see
    :func:`load_retry_after`), or None once it may be tried; ``x-should-retry: false`` when
    the failure was its file's (:class:`ModelFileError`)."""
    left = load_retry_after(failed_until, key, retry_s)
    if left is None:
        return None
    return errors.model_unavailable(name, left, lasting=history.get(key, ("", 0.0, False))[2])


def note_load_failure(failed_until: dict[str, float],
                      history: dict[str, tuple[str, float, bool]],
                      key: str, retry_s: float, message: str, *args: Any,
                      logger: logging.Logger | None = None) -> None:
    """In the ``except`` block of a failed load: log it and set when ``key`` may be tried
    again. A first failure, or one unlike the last, is logged with its traceback and tried again
    after ``retry_s``; the same failure again is one line, and the wait doubles up to
    LOAD_RETRY_MAX_S: a damaged or missing file does not mend by itself, and every attempt reads
    and hashes it again (a failing model was retried, and its traceback logged, every second of
    traffic; review h_ops1 3). ``history``: ``{key: (the last failure, the wait it set,
    whether it was a file's)}``, cleared by a load that succeeds."""
    import sys

    logger = logger or log
    exc = sys.exc_info()[1]
    failure = f"{type(exc).__name__}: {exc}"
    last, wait, _ = history.get(key, ("", 0.0, False))
    if failure == last:
        wait = min(max(retry_s, 2 * wait), max(retry_s, LOAD_RETRY_MAX_S))
        logger.error(message + " again, as before (%s); next attempt in %.0f s", *args, failure,
                     wait)
    else:
        wait = retry_s
        logger.exception(message, *args)
    history[key] = (failure, wait, exc is not None and errors.chain_has(exc, ModelFileError))
    failed_until[key] = time.monotonic() + wait


# The modality each backend kind serves.
BACKEND_MODALITY = {"text-onnx": "text", "image-onnx": "image", "image-conse": "image"}


class RegistryError(ValueError):
    """The registry file is malformed (a deployment-time error, not a client error)."""


class ModelFileError(ValueError):
    """A model's file is missing, or is not the one the registry pins (its size or sha256).
    Files do not change under a running app (Azure mounts its package read-only), so clients
    are told a retry cannot help (``x-should-retry: false``); the server still tries the load
    again now and then (note_load_failure)."""


@dataclass(frozen=True)
class FileRef:
    path: Path
    sha256: str
    size: int | None

    def verified(self) -> Path:
        """The file's path after checking its size and sha256 (raises on mismatch)."""
        if not self.path.is_file():
            raise ModelFileError(f"model file missing: {self.path.name}")
        if self.size is not None and self.path.stat().st_size != self.size:
            raise ModelFileError(f"{self.path.name}: size {self.path.stat().st_size} != "
                                 f"{self.size}")
        digest = hashlib.sha256()
        with self.path.open("rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                digest.update(chunk)
        if digest.hexdigest() != self.sha256:
            raise ModelFileError(f"{self.path.name}: sha256 mismatch (expected "
                                 f"{self.sha256[:12]}…)")
        return self.path

    def verifying(self) -> Callable[[], Path]:
        """Start :meth:`verified` on another thread; the function returned waits for it and
        returns the path or raises what it raised. ``hashlib`` releases the GIL while it hashes,
        so the check (30-55 ms for the text models here) overlaps the caller's own loading."""
        box: list[Any] = []

        def check() -> None:
            try:
                box.append(self.verified())
            except BaseException as exc:  # noqa: BLE001 - raised by the waiting caller
                box.append(exc)
        thread = threading.Thread(target=check, name=f"verify {self.path.name}", daemon=True)
        thread.start()

        def wait() -> Path:
            thread.join()
            if isinstance(box[0], BaseException):
                raise box[0]
            return box[0]
        return wait


@dataclass(frozen=True)
class Deployment:
    name: str
    aliases: tuple[str, ...]
    modality: str
    default: bool
    backend: str
    model_name: str
    model_type: str
    provider: str
    dimensions: int
    matryoshka_dimensions: tuple[int, ...]
    max_tokens: int | None
    prompts: dict[str, str]
    calibration: FileRef | Path | None   # a FileRef is verified when first read
    files: dict[str, FileRef]
    options: dict[str, Any] = field(default_factory=dict)

    @property
    def calibration_path(self) -> Path | None:
        c = self.calibration
        return c.path if isinstance(c, FileRef) else c

    @property
    def supported_dimensions(self) -> tuple[int, ...]:
        return tuple(sorted({self.dimensions, *self.matryoshka_dimensions}, reverse=True))


def _resolve_path(entry: dict[str, Any], base: Path, where: str) -> Path:
    rel = entry.get("path")
    if not isinstance(rel, str) or not rel:
        raise RegistryError(f"{where}: 'path' is required")
    package = entry.get("package")
    if package:
        if not isinstance(package, str):
            raise RegistryError(f"{where}: 'package' must be a string")
        try:
            spec = importlib.util.find_spec(package)
        except (ImportError, ValueError):  # a dotted name whose parent is not installed
            spec = None
        if spec is None or not spec.submodule_search_locations:
            # Reported as ModelUnavailable when the model is first used.
            return Path("/nonexistent-package") / package / rel
        return Path(list(spec.submodule_search_locations)[0]) / rel
    return (base / rel).resolve()


def _file_ref(entry: Any, base: Path, where: str) -> FileRef:
    if not isinstance(entry, dict):
        raise RegistryError(f"{where}: must be an object with 'path' and 'sha256'")
    sha = entry.get("sha256")
    if not isinstance(sha, str) or not _SHA256.fullmatch(sha.lower()):
        raise RegistryError(f"{where}: 'sha256' must be 64 hexadecimal digits")
    size = entry.get("bytes")
    if size is not None and (type(size) is not int or size < 0):
        raise RegistryError(f"{where}: 'bytes' must be a non-negative integer")
    return FileRef(_resolve_path(entry, base, where), sha.lower(), size)


_SHA256 = re.compile(r"[0-9a-f]{64}")
_MISSING = object()


def _field(d: dict[str, Any], key: str, where: str, kind: type | tuple[type, ...],
           default: Any = _MISSING) -> Any:
    """``d[key]`` if it is a JSON value of ``kind`` (booleans are not numbers); ``default``
    when absent or null, else a :class:`RegistryError` naming the field."""
    value = d.get(key)
    if value is None:
        if default is _MISSING:
            raise RegistryError(f"{where}: missing {key!r}")
        return default
    if not isinstance(value, kind) or (isinstance(value, bool) and bool not in
                                       (kind if isinstance(kind, tuple) else (kind,))):
        names = " or ".join(k.__name__ for k in (kind if isinstance(kind, tuple) else (kind,)))
        raise RegistryError(f"{where}: {key!r} must be a JSON {_JSON_NAMES.get(names, names)}")
    return value


_JSON_NAMES = {"str": "string", "int": "integer", "bool": "boolean (true or false)",
               "list": "array", "dict": "object"}


def _name(value: Any, where: str) -> str:
    if not isinstance(value, str) or not value.strip() or value != value.strip():
        raise RegistryError(f"{where}: names must be non-empty strings without surrounding "
                            f"spaces, got {value!r}")
    return value


def _positive(value: int, key: str, where: str) -> int:
    if value < 1:
        raise RegistryError(f"{where}: {key!r} must be at least 1")
    return value


def _calibration(value: Any, base: Path, where: str) -> FileRef | Path | None:
    """A calibration file: ``{"path", "sha256", "bytes"}`` (verified when first read), or a
    path string (read as it is)."""
    if value is None:
        return None
    if isinstance(value, str) and value:
        return (base / value).resolve()
    if isinstance(value, dict):
        return _file_ref(value, base, f"{where}.calibration")
    raise RegistryError(f"{where}: 'calibration' must be a path or an object with 'path' and "
                        "'sha256'")


def _deployment(d: Any, base: Path, where: str) -> Deployment:
    if not isinstance(d, dict):
        raise RegistryError(f"{where}: must be an object")
    name = _name(_field(d, "name", where, str), f"{where}.name")
    modality = _field(d, "modality", where, str)
    if modality not in MODALITIES:
        raise RegistryError(f"{where}: modality must be one of {MODALITIES}")
    backend = _field(d, "backend", where, str)
    if backend not in BACKEND_KINDS:
        raise RegistryError(f"{where}: unknown backend {backend!r}")
    if BACKEND_MODALITY[backend] != modality:
        raise RegistryError(f"{where}: backend {backend!r} serves {BACKEND_MODALITY[backend]}, "
                            f"not {modality}")
    aliases = tuple(_name(a, f"{where}.aliases")
                    for a in _field(d, "aliases", where, list, []))
    prompts = _field(d, "prompts", where, dict, {})
    if not set(prompts) <= set(INPUT_TYPES):
        raise RegistryError(f"{where}: prompts keys must be among {INPUT_TYPES}")
    if not all(isinstance(v, str) for v in prompts.values()):
        raise RegistryError(f"{where}: prompts must be strings")
    dims = _positive(_field(d, "dimensions", where, int), "dimensions", where)
    mat = _field(d, "matryoshka_dimensions", where, list, [])
    if any(type(m) is not int or not 0 < m < dims for m in mat):
        raise RegistryError(f"{where}: matryoshka sizes must be integers below {dims}")
    max_tokens = _field(d, "max_tokens", where, int, 0)
    files = _field(d, "files", where, dict, {})
    return Deployment(
        name=name, aliases=aliases, modality=modality,
        default=_field(d, "default", where, bool, False), backend=backend,
        model_name=_field(d, "model_name", where, str, name),
        model_type=_field(d, "model_type", where, str, "embeddings"),
        provider=_field(d, "provider", where, str, ""), dimensions=dims,
        matryoshka_dimensions=tuple(mat),
        max_tokens=_positive(max_tokens, "max_tokens", where) if max_tokens else None,
        prompts=dict(prompts), calibration=_calibration(d.get("calibration"), base, where),
        files={k: _file_ref(v, base, f"{where}.files.{k}") for k, v in files.items()},
        options=dict(_field(d, "options", where, dict, {})),
    )


def parse_registry(doc: dict[str, Any], base: Path) -> list[Deployment]:
    items = doc.get("deployments") if isinstance(doc, dict) else None
    if not isinstance(items, list) or not items:
        raise RegistryError("registry: 'deployments' must be a non-empty list")
    out = [_deployment(d, base, f"deployments[{i}]") for i, d in enumerate(items)]
    names: dict[str, str] = {}
    for dep in out:
        for n in (dep.name, *dep.aliases):
            if n.lower() in names:
                raise RegistryError(f"registry: name {n!r} used twice")
            names[n.lower()] = dep.name
    for modality in MODALITIES:
        defaults = [d.name for d in out if d.modality == modality and d.default]
        if len(defaults) > 1:
            raise RegistryError(f"registry: more than one default {modality} deployment")
    return out


class Calibration:
    """Per-dimension [lo, hi] ranges for int8/uint8, keyed by output size."""

    def __init__(self, ranges: dict[int, tuple[np.ndarray, np.ndarray]]):
        self._ranges = ranges

    @classmethod
    def load(cls, path: Path) -> "Calibration":
        doc = json.loads(path.read_text())
        ranges = {}
        for size, r in doc["ranges"].items():
            lo = np.asarray(r["lo"], dtype=np.float32)
            hi = np.asarray(r["hi"], dtype=np.float32)
            if lo.shape != (int(size),) or hi.shape != lo.shape or not np.all(hi > lo):
                raise RegistryError(f"{path.name}: bad ranges for size {size}")
            ranges[int(size)] = (lo, hi)
        return cls(ranges)

    def get(self, size: int) -> tuple[np.ndarray, np.ndarray] | None:
        return self._ranges.get(size)


class Registry:
    def __init__(self, deployments: list[Deployment], settings: Settings):
        self.deployments = deployments
        self.settings = settings
        self._by_name = {n.lower(): d for d in deployments for n in (d.name, *d.aliases)}
        self._backends: dict[str, Backend] = {}
        self._calibrations: dict[str, Calibration | None] = {}
        self._locks = {d.name: threading.Lock() for d in deployments}
        self._failed_until: dict[str, float] = {}
        self._failures: dict[str, tuple[str, float, bool]] = {}   # note_load_failure's history

    @classmethod
    def from_settings(cls, settings: Settings) -> "Registry":
        path = Path(settings.registry_path) if settings.registry_path else DEFAULT_REGISTRY
        try:
            doc = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise RegistryError(f"cannot read registry {path}: {exc}") from None
        return cls(parse_registry(doc, path.parent), settings)

    # -- lookup ---------------------------------------------------------------------------------
    def find(self, name: str) -> Deployment | None:
        return self._by_name.get(name.lower())

    def default_for(self, modality: str) -> Deployment | None:
        candidates = [d for d in self.deployments if d.modality == modality]
        return next((d for d in candidates if d.default), candidates[0] if candidates else None)

    def select(self, modality: str, route: str, model: str | None, header: str | None,
               header_name: str = "azureml-model-deployment", *,
               any_modality: bool = False) -> Deployment:
        """The deployment a request addresses: the ``model`` field and/or a name given outside
        the body (the ``azureml-model-deployment`` header, or a URL path segment).
        ``any_modality``: the route takes every deployment (``/info``), so an unknown name's
        404 lists them all, not only ``modality``'s."""
        chosen: Deployment | None = None
        chosen_by = "model"
        for value, target in ((model, "model"), (header, header_name)):
            if value is None:
                continue
            dep = self.find(value)
            if dep is None:
                serving = [d for d in self.deployments if any_modality or d.modality == modality]
                err = errors.model_not_found(
                    value, [d.name for d in serving],
                    tuple(n for d in serving for n in (d.name, *d.aliases)))
                err.target = target
                raise err
            if chosen is not None and dep.name != chosen.name:
                raise errors.validation(
                    f"'model' ({errors.clip(model)}) and '{header_name}' "
                    f"({errors.clip(header)}) name different deployments.", target="model")
            if chosen is None:
                chosen, chosen_by = dep, target
        if chosen is None:
            chosen = self.default_for(modality)
            if chosen is None:
                raise errors.ApiError(404, "ModelNotFound",
                                      f"No {modality} deployment is configured.")
        if chosen.modality != modality:
            err = errors.modality_not_supported(chosen.name, route, chosen.modality)
            err.target = chosen_by      # the field, header or path segment that named it
            raise err
        return chosen

    # -- loading --------------------------------------------------------------------------------
    def is_loaded(self, dep: Deployment) -> bool:
        backend = self._backends.get(dep.name)
        return backend is not None and backend.loaded()

    def load_failed(self, dep: Deployment) -> bool:
        """Whether the deployment's last load, its calibration file's or a part its backend
        loads on first use (``load_failed()``, where it has one: a text model's sessions, the
        long-input model) failed, until one succeeds."""
        if dep.name in self._failures or f"{dep.name} calibration" in self._failures:
            return True
        part_failed = getattr(self._backends.get(dep.name), "load_failed", None)
        return bool(part_failed and part_failed())

    def backend(self, dep: Deployment) -> Backend:
        """The deployment's backend, created on first use (once, thread-safely)."""
        backend = self._backends.get(dep.name)
        if backend is not None:
            return backend
        retry = self.settings.retry_after_s
        failed = load_failed(dep.name, self._failed_until, self._failures, dep.name, retry)
        if failed is not None:
            raise failed  # failed moments ago: don't retry yet
        with self._locks[dep.name]:
            backend = self._backends.get(dep.name)
            if backend is None:
                failed = load_failed(dep.name, self._failed_until, self._failures, dep.name,
                                     retry)
                if failed is not None:
                    raise failed
                module_name, factory = BACKEND_KINDS[dep.backend].split(":")
                try:
                    cls: Callable[..., Backend] = getattr(importlib.import_module(module_name),
                                                          factory)
                    backend = cls(dep, self.settings, self)
                except Exception:  # noqa: BLE001 - any load failure is a 503 for the client
                    note_load_failure(self._failed_until, self._failures, dep.name, retry,
                                      "deployment %s failed to load", dep.name)
                    raise load_failed(dep.name, self._failed_until, self._failures, dep.name,
                                      retry) or errors.model_unavailable(dep.name, retry) from None
                self._failures.pop(dep.name, None)
                self._backends[dep.name] = backend
        return backend

    def calibration(self, dep: Deployment) -> Calibration | None:
        """The deployment's calibration ranges; None if it declares none. A declared file that
        is missing, fails its checksum or is malformed is a 503 (the server's fault, not the
        request's), remembered like a model that fails to load (note_load_failure)."""
        if dep.calibration is None:
            return None
        if dep.name not in self._calibrations:
            retry = self.settings.retry_after_s
            key = f"{dep.name} calibration"
            with self._locks[dep.name]:
                if dep.name not in self._calibrations:
                    failed = load_failed(dep.name, self._failed_until, self._failures, key,
                                         retry)
                    if failed is not None:
                        raise failed
                    ref = dep.calibration
                    try:
                        path = ref.verified() if isinstance(ref, FileRef) else ref
                        self._calibrations[dep.name] = Calibration.load(path)
                    except Exception:  # noqa: BLE001 - the file is the server's problem
                        note_load_failure(self._failed_until, self._failures, key, retry,
                                          "deployment %s: its calibration file failed to load",
                                          dep.name)
                        raise load_failed(dep.name, self._failed_until, self._failures, key,
                                          retry) or errors.model_unavailable(dep.name,
                                                                             retry) from None
                    self._failures.pop(key, None)
        return self._calibrations[dep.name]
