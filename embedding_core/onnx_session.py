"""ONNX Runtime session construction from settings (shared by every ONNX backend)."""

from __future__ import annotations

from pathlib import Path

from .settings import Settings

_LEVELS = {"disabled": "ORT_DISABLE_ALL", "basic": "ORT_ENABLE_BASIC",
           "extended": "ORT_ENABLE_EXTENDED", "all": "ORT_ENABLE_ALL"}


def create_session(model_path: Path, settings: Settings):
    import onnxruntime as ort  # heavy import: only when a model loads

    opts = ort.SessionOptions()
    opts.graph_optimization_level = getattr(ort.GraphOptimizationLevel,
                                            _LEVELS[settings.ort_optimization_level])
    if settings.ort_intra_op_threads:
        opts.intra_op_num_threads = settings.ort_intra_op_threads
    opts.inter_op_num_threads = settings.ort_inter_op_threads
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.log_severity_level = 3
    return ort.InferenceSession(str(model_path), sess_options=opts,
                                providers=["CPUExecutionProvider"])
