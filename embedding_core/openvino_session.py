"""Long inputs on OpenVINO in bf16, on CPUs with AMX.

A text deployment may name a second model for its long inputs (``options.long_inputs`` in
registry.json). The default all-MiniLM-L6-v2 names its exact (fp32-arithmetic) file: run by
OpenVINO's CPU plugin in bf16 on AMX tiles, an input of 129-256 tokens costs 1.2-1.3x less than
the per-token int8 model in ONNX Runtime, and its vector is within cosine 0.9999 of
sentence-transformers instead of 0.9986 (docs/performance-model.md). Short inputs stay on ONNX
Runtime, where OpenVINO is slower (0.5x at 1 x 12 tokens, 0.7x at 2 x 27).

Which runtime embeds an input depends only on the input's own length and on the process (its
CPU and memory), never on its batch, and OpenVINO's rows do not depend on their batch once every
run is padded to a multiple of 16 tokens (:func:`pad_width`): a vector stays bitwise the same
alone and in any batch.

Used only where the CPU has AMX (``amx_bf16``) and the process may use at least
:data:`LONG_INPUT_MIN_MEMORY_MB` MiB: elsewhere OpenVINO would be slower than the int8 model
(0.81-0.85x in bf16 on AMD Zen 5's ``avx512_bf16``; 0.35-0.55x in fp32 on CPUs without bf16).
``EMBEDDINGS_LONG_INPUT_RUNTIME=onnxruntime`` turns it off. ``openvino`` is imported (without its
model converter, :func:`import_openvino`) and the model compiled on the first long input
(0.1 s + 0.7 s here), not at start-up.

Memory: the compiled model holds ~150-160 MB (its fp16 source, the folded fp32 constants and the
packed bf16 weights) and its libraries map ~75 MB for as long as the process lives. The buffers
of its largest runs (~35 MB after 1,024-token runs) are given back when the process goes idle
(``CompiledModel.release_memory``, like ONNX Runtime's arena shrinkage in onnx_session.py).
In the README's soak that is 730 MB peak and ~400 MB idle against 484 and ~170 MB with long
inputs on ONNX Runtime, so where the process may use less than
:data:`LONG_INPUT_MIN_MEMORY_MB` (a 512 MB Flex Consumption instance, a small container or VM:
:func:`settings.usable_memory`) long inputs stay on ONNX Runtime.
"""

from __future__ import annotations

import importlib.util
import logging
import sys
import threading
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np

from . import memory
from . import settings as settings_module
from .settings import Settings

log = logging.getLogger(__name__)

AMX_FLAG = "amx_bf16"
# Below this much memory for the process (MiB; its cgroup's limit or the machine's), long inputs
# stay on ONNX Runtime. Not derived from one measurement: OpenVINO adds ~225 MiB for the process's
# life, and the README's soak peaked at 730 MiB with it (484 without); 1,536 is about twice that
# peak, room for the Functions host, image decoding and bursts. Flex instances fall wide of it
# on either side: 512 MB (784 with the platform's 272) below, 2,048 (2,320) above.
LONG_INPUT_MIN_MEMORY_MB = 1536
BLOCK = 16       # OpenVINO's attention takes keys in blocks of 16: a partial last block differs
MIN_WIDTH = 32   # ... and below 32 tokens it runs another kernel


def pad_width(longest: int) -> int:
    """The padded width of an OpenVINO run whose longest input has ``longest`` tokens.

    Measured (OpenVINO 2026.4.1, this CPU, every length from 100 to 256 tokens and the 200
    held-out texts): an input's vector is bitwise the same at every width from
    ``max(32, ceil16(n))`` up, and differs (by up to 6e-4) at widths between n and the next
    multiple of 16. So every run is padded to a multiple of 16 tokens, at least 32."""
    return max(MIN_WIDTH, -(-longest // BLOCK) * BLOCK)


def cpu_flags(path: str = "/proc/cpuinfo") -> set[str]:
    try:
        with open(path, encoding="ascii", errors="replace") as fh:
            for line in fh:
                if line.startswith("flags"):
                    return set(line.partition(":")[2].split())
    except OSError:
        pass
    return set()


class OpenVinoSession:
    """An ONNX model compiled by OpenVINO for the CPU in bf16, run like an ONNX Runtime session
    (``run(output_names, feeds)``), from several threads at once: one stream per inference
    worker, one infer request per calling thread. Compiled on the first run."""

    def __init__(self, model: Any, settings: Settings):
        self.model = model  # a registry FileRef: its checksum is verified when compiled
        self.streams = settings.workers
        self.threads = settings.workers * settings.session_threads
        self._lock = threading.Lock()
        self._compiled: Any = None
        self._input_names: frozenset[str] | None = None
        self._local = threading.local()
        if settings.memory_tuning:
            memory.on_idle(OpenVinoSession.release_memory, owner=self)

    def _compile(self) -> Any:
        with self._lock:
            if self._compiled is None:
                checked = self.model.verifying()  # while OpenVINO imports and reads the file
                ov = import_openvino()  # heavy import: only when the first long input runs
                core = ov.Core()
                try:
                    model = core.read_model(str(self.model.path))
                finally:
                    path = checked()  # a damaged file raises this, whatever read_model did
                compiled = core.compile_model(model, "CPU", {
                    "INFERENCE_PRECISION_HINT": "bf16",
                    "NUM_STREAMS": self.streams,
                    "INFERENCE_NUM_THREADS": self.threads,
                    # Pinned, every stream's thread lands on the same core (measured: two
                    # workers at half speed each).
                    "ENABLE_CPU_PINNING": False,
                })
                _warm_up(compiled)
                self._input_names = frozenset(port.get_any_name() for port in compiled.inputs)
                self._compiled = compiled
                log.info("compiled %s with OpenVINO (bf16, %d streams)", path.name, self.streams)
            return self._compiled

    @property
    def compiled(self) -> bool:
        return self._compiled is not None

    @property
    def input_names(self) -> frozenset[str]:
        """The model's input names (compiles it if it is not yet)."""
        if self._input_names is None:
            self._compile()
        return self._input_names

    def release_memory(self) -> bool:
        """Give back the buffers of past runs (they are allocated again by the next run, ~5 %
        slower than a warm one). Skipped, and False, before the first compile or while a run
        is in progress (OpenVINO refuses then; the next idle period tries again)."""
        compiled = self._compiled
        if compiled is None:
            return False
        try:
            compiled.release_memory()
        except RuntimeError:  # "busy state": a run started after the process went idle
            return False
        return True

    def run(self, output_names: Sequence[str], feeds: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        request = getattr(self._local, "request", None)
        if request is None:
            request = self._local.request = self._compile().create_infer_request()
        # Copies of the outputs: the thread's infer request is reused and would overwrite them.
        results = request.infer(dict(feeds), share_outputs=False)
        return [results[name] for name in output_names]


CONVERTER = "openvino.tools.ovc"
_import_lock = threading.Lock()   # two sessions' first compiles must not both edit sys.modules


def import_openvino() -> Any:
    """``import openvino`` without its model converter, which this service never uses.

    The package's ``__init__`` imports ``openvino.tools.ovc`` if it can (``try: ... except
    ImportError: pass``), and with it ``openvino_telemetry``, ``urllib.request`` and
    ``http.client``: 0.20 s of the first long input's wait here, against 0.07 s without it. A
    ``None`` in ``sys.modules`` makes that import fail at once; it is removed afterwards, so the
    converter can still be imported later. A version whose ``__init__`` needs the converter is
    imported whole."""
    with _import_lock:
        if "openvino" in sys.modules or CONVERTER in sys.modules:
            import openvino
            return openvino
        sys.modules[CONVERTER] = None  # type: ignore[assignment]
        try:
            import openvino
        except ImportError:
            openvino = None  # type: ignore[assignment]
        finally:
            if CONVERTER in sys.modules and sys.modules[CONVERTER] is None:
                del sys.modules[CONVERTER]
        if openvino is None:
            import openvino
        return openvino


def _warm_up(compiled: Any) -> None:
    """One inference of 1 x 32 tokens, on this thread, before any other thread runs one.

    The first inference initialises function-local statics in OpenVINO's Python binding (the
    input dispatch). Two workers doing that at once deadlocked, and every later request queued
    behind them: py-spy showed both inside ``InferRequest.infer``'s input dispatch, one waiting
    in ``__cxa_guard_acquire`` (a static's initialisation guard), and no other Python thread
    could run, i.e. the GIL was held by a thread waiting for the guard whose owner waited for
    the GIL. Compiling holds ``OpenVinoSession._lock`` and the model is published only after
    this, so it runs alone."""
    feeds = {}
    for port in compiled.inputs:
        name = port.get_any_name()
        fill = 1 if name == "attention_mask" else 0
        feeds[name] = np.full((1, MIN_WIDTH), fill, dtype=np.int64)
    results = compiled.create_infer_request().infer(feeds)
    for port in compiled.outputs:
        np.array(results[port.get_any_name()], copy=True)


@dataclass
class LongInputs:
    """Where a text deployment's long inputs run: inputs of ``from_tokens`` tokens or more go to
    ``session`` in runs of at most ``max_run_tokens`` padded tokens."""

    from_tokens: int
    max_run_tokens: int
    session: OpenVinoSession


def why_not_here() -> str | None:
    """Why long inputs cannot run on OpenVINO in this process (no AMX, too little memory), or
    None if they can."""
    if AMX_FLAG not in cpu_flags():
        return "no AMX on this CPU"
    usable = settings_module.usable_memory()
    if usable is not None and usable < LONG_INPUT_MIN_MEMORY_MB << 20:
        return (f"this process may use {usable >> 20} MiB of memory, less than the "
                f"{LONG_INPUT_MIN_MEMORY_MB} MiB that OpenVINO is used with")
    return None


def long_inputs(options: Mapping[str, Any], files: Mapping[str, Any],
                settings: Settings, deployment: str) -> LongInputs | None:
    """The deployment's long-input runtime, or None where it does not apply: not configured,
    turned off (``EMBEDDINGS_LONG_INPUT_RUNTIME=onnxruntime``), no AMX, less memory than
    :data:`LONG_INPUT_MIN_MEMORY_MB`, or OpenVINO missing."""
    spec = options.get("long_inputs")
    if not spec or settings.long_input_runtime == "onnxruntime":
        return None
    if spec.get("runtime") != "openvino-bf16":
        raise ValueError(f"deployment {deployment}: long_inputs.runtime must be 'openvino-bf16'")
    if not options.get("output"):
        raise ValueError(f"deployment {deployment}: long_inputs needs options.output (the output "
                         "both models give)")
    reason = why_not_here()
    if reason:
        log.info("deployment %s: %s; long inputs run on ONNX Runtime", deployment, reason)
        return None
    if importlib.util.find_spec("openvino") is None:
        log.warning("deployment %s: openvino is not installed; long inputs run on ONNX Runtime",
                    deployment)
        return None
    # Verified (sha256 of 45 MB) when first compiled, not here: start-up stays as fast.
    return LongInputs(int(spec["from_tokens"]), int(spec.get("max_run_tokens", 1024)),
                      OpenVinoSession(files[spec["file"]], settings))
