"""ONNX Runtime session construction from settings (shared by every ONNX backend)."""

from __future__ import annotations

from pathlib import Path

from .settings import Settings

_LEVELS = {"disabled": "ORT_DISABLE_ALL", "basic": "ORT_ENABLE_BASIC",
           "extended": "ORT_ENABLE_EXTENDED", "all": "ORT_ENABLE_ALL"}


def create_session(model_path: Path, settings: Settings, *, spin: bool = True):
    """A CPU session. ``spin``: whether idle intra-op threads busy-wait for the next run (good
    for back-to-back small runs, as in text; bad when Python work such as image decoding runs
    between them). ``EMBEDDINGS_ORT_SPINNING`` overrides it for every model."""
    import onnxruntime as ort  # heavy import: only when a model loads

    opts = ort.SessionOptions()
    opts.graph_optimization_level = getattr(ort.GraphOptimizationLevel,
                                            _LEVELS[settings.ort_optimization_level])
    if settings.ort_intra_op_threads:
        opts.intra_op_num_threads = settings.ort_intra_op_threads
    opts.inter_op_num_threads = settings.ort_inter_op_threads
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.log_severity_level = 3
    if settings.ort_spinning is not None:
        spin = settings.ort_spinning
    opts.add_session_config_entry("session.intra_op.allow_spinning", "1" if spin else "0")
    # The CPU arena keeps the largest run's buffers; release_arena_when_idle gives them back.
    opts.enable_cpu_mem_arena = settings.ort_cpu_mem_arena
    return ort.InferenceSession(str(model_path), sess_options=opts,
                                providers=["CPUExecutionProvider"])


def release_arena_when_idle(session, feeds: dict, settings: Settings) -> None:
    """When the process goes idle (memory.on_idle), run ``feeds`` (a tiny valid input) once with
    onnxruntime's arena shrinkage, which frees the arena's chunks no longer in use: the buffers
    of the last burst's largest batch go back to the system instead of staying for good."""
    if not (settings.ort_cpu_mem_arena and settings.memory_tuning):
        return
    import weakref

    import onnxruntime as ort

    from . import memory

    shrink = ort.RunOptions()
    shrink.add_run_config_entry("memory.enable_memory_arena_shrinkage", "cpu:0")
    ref = weakref.ref(session)       # the hook must not keep a discarded session alive

    def hook() -> None:
        live = ref()
        if live is not None:
            live.run(None, feeds, shrink)
    memory.on_idle(hook)
