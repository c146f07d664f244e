"""What `make reproduce` (scripts/reproduce.py) accepts as the same file when it rebuilds the data
files: the rules applied to the committed files, changed as a rebuild on another CPU changes them
(last bits of fp32 outputs and measurements) and as a wrong rebuild would (anything else).
`make reproduce` itself runs the scripts (minutes, torch): CI runs it."""

from __future__ import annotations

import base64
import importlib.util
import io
import json
import sys

import numpy as np
import pytest

from conftest import DATA, ROOT, git_repo

spec = importlib.util.spec_from_file_location("reproduce", ROOT / "scripts" / "reproduce.py")
reproduce = importlib.util.module_from_spec(spec)
sys.modules["reproduce"] = reproduce          # dataclasses look their module up
spec.loader.exec_module(reproduce)

MINILM = ROOT / "embedding_core" / "models" / "all-MiniLM-L6-v2"
EFFNET = ROOT / "embedding_core" / "models" / "efficientnet-lite0"


def status(path, committed: bytes, rebuilt: bytes) -> str:
    return reproduce.compare(str(path.relative_to(ROOT)), committed, rebuilt)[0]


def test_the_same_bytes_are_identical():
    data = (MINILM / "calibration.json").read_bytes()
    assert status(MINILM / "calibration.json", data, data) == "identical"


def test_pytorch_reference_vectors_may_differ_in_their_last_bits_only():
    path = DATA / "minilm_reference.json"
    ref = json.loads(path.read_text(encoding="utf-8"))

    def with_first_vector(delta: float) -> bytes:
        other = json.loads(json.dumps(ref))
        other["embeddings"][0] = [x + delta for x in other["embeddings"][0]]
        return json.dumps(other).encode()

    assert status(path, path.read_bytes(), with_first_vector(2e-7)) == "close"
    assert status(path, path.read_bytes(), with_first_vector(1e-3)) == "DIFFERENT"
    fewer = json.loads(json.dumps(ref))
    fewer["texts"] = fewer["texts"][1:]
    assert status(path, path.read_bytes(), json.dumps(fewer).encode()) == "DIFFERENT"


def test_base64_float32_vectors_are_compared_as_numbers():
    path = DATA / "images" / "reference.json"
    ref = json.loads(path.read_text(encoding="utf-8"))
    name = next(iter(ref["photos"]))

    def with_vector(scale: float, shift: float) -> bytes:
        other = json.loads(json.dumps(ref))
        v = np.frombuffer(base64.b64decode(other["photos"][name]["embedding"]), "<f4") * scale + shift
        other["photos"][name]["embedding"] = base64.b64encode(v.astype("<f4").tobytes()).decode()
        return json.dumps(other).encode()

    assert status(path, path.read_bytes(), with_vector(1.0, 1e-7)) == "close"
    assert status(path, path.read_bytes(), with_vector(1.0, 1e-3)) == "DIFFERENT"
    assert status(path, path.read_bytes(), with_vector(-1.0, 0.0)) == "DIFFERENT"


def test_a_provenance_file_may_differ_in_its_measurements_not_in_its_text_or_sizes():
    path = EFFNET / "PROVENANCE.md"
    text = path.read_text(encoding="utf-8")
    old_gap = next(line for line in text.splitlines() if line.startswith("| embedding |"))
    noisy = text.replace(old_gap, old_gap.replace("1.", "1.1", 1))      # a noise-floor figure
    assert noisy != text
    assert status(path, text.encode(), noisy.encode()) == "close"
    size = next(line for line in text.splitlines() if line.startswith("| bytes |"))
    assert status(path, text.encode(), text.replace(size, size[:-3] + "9 |").encode()) == "DIFFERENT"
    assert status(path, text.encode(), text.replace("dynamo exporter", "TorchScript exporter").encode()) \
        == "DIFFERENT"
    minilm = (MINILM / "PROVENANCE.md").read_text(encoding="utf-8")
    assert "min 0.9986314" in minilm
    assert status(MINILM / "PROVENANCE.md", minilm.encode(),
                  minilm.replace("min 0.9986314", "min 0.9986315").encode()) == "close"
    assert status(MINILM / "PROVENANCE.md", minilm.encode(),
                  minilm.replace("min 0.9986314", "min 0.9950000").encode()) == "DIFFERENT"


def test_a_model_with_other_bytes_passes_only_with_other_weight_bits_and_the_same_outputs():
    """A rebuild on another CPU may change the last bits of weights (equivalent when the outputs
    stay within 1e-5); anything else in the file is a difference, even when the outputs are the
    same: the build machine's paths in node metadata, other names or versions, weights kept that
    nothing reads, a node added or left out."""
    import onnx

    path = EFFNET / "model.onnx"
    committed = path.read_bytes()

    def changed(edit) -> bytes:
        model = onnx.load_from_string(committed)
        edit(model)
        return model.SerializeToString()

    def bias_plus(delta):
        def edit(model):
            bias = next(i for i in model.graph.initializer if i.name.endswith("bias") and i.dims)
            values = onnx.numpy_helper.to_array(bias).copy()
            values[0] += delta
            bias.CopyFrom(onnx.numpy_helper.from_array(values, bias.name))
        return edit

    def node_metadata(model):
        model.graph.node[0].metadata_props.add(key="pkg.torch.onnx.stack_trace",
                                               value="/home/someone/checkout/scripts/x.py")

    def unused_weight(model):
        model.graph.initializer.append(onnx.numpy_helper.from_array(np.zeros(4, np.float32), "unused"))

    def identity_output(model):
        out = model.graph.output[0].name
        producer = next(n for n in model.graph.node if out in n.output)
        producer.output[list(producer.output).index(out)] = out + "_pre"
        model.graph.node.append(onnx.helper.make_node("Identity", [out + "_pre"], [out]))

    assert status(path, committed, changed(bias_plus(1e-7))) == "equivalent"
    assert status(path, committed, changed(bias_plus(1.0))) == "DIFFERENT"
    for edit in (lambda m: setattr(m, "doc_string", m.doc_string + " (rebuilt)"),
                 lambda m: setattr(m, "producer_name", "pytorch"),
                 lambda m: setattr(m, "ir_version", m.ir_version - 1),
                 lambda m: setattr(m.graph.input[0].type.tensor_type.shape.dim[0], "dim_param", "N"),
                 node_metadata, unused_weight, identity_output):
        assert status(path, committed, changed(edit)) == "DIFFERENT"


@pytest.mark.parametrize("deployment", ["all-MiniLM-L6-v2", "all-MiniLM-L6-v2-exact"])
def test_a_text_model_with_other_bytes_is_run_and_compared(deployment):
    """The text models are run on the reference texts cut at the service's 256 tokens (one has
    602: untruncated, neither model could run, and every rebuilt text model that was not the same
    bytes was DIFFERENT with onnxruntime's error, however close its outputs)."""
    import onnx

    path = ROOT / "embedding_core" / "models" / deployment / "model.onnx"
    committed = path.read_bytes()

    def layernorm_bias_plus(delta: float) -> bytes:
        model = onnx.load_from_string(committed)
        beta = next(i for i in model.graph.initializer
                    if i.name == "bert.encoder.layer.5.output.LayerNorm.bias")
        values = onnx.numpy_helper.to_array(beta).copy()
        values[0] += delta
        beta.CopyFrom(onnx.numpy_helper.from_array(values, beta.name))
        return model.SerializeToString()

    assert status(path, committed, layernorm_bias_plus(1e-7)) == "equivalent"
    assert status(path, committed, layernorm_bias_plus(1.0)) == "DIFFERENT"


@pytest.mark.parametrize("name", ["classes.txt", "class_embeddings.npy"])
def test_other_files_must_be_identical_or_numerically_close(name):
    path = ROOT / "embedding_core" / "models" / "imagenet" / name
    data = path.read_bytes()
    if name.endswith(".npy"):
        import io

        m = np.load(io.BytesIO(data))
        for delta, expected in ((1e-7, "close"), (1e-3, "DIFFERENT")):
            buf = io.BytesIO()
            np.save(buf, (m + delta).astype(m.dtype))
            assert status(path, data, buf.getvalue()) == expected
    else:
        assert status(path, data, data.replace(b"tench", b"Tench", 1)) == "DIFFERENT"


def test_non_finite_values_and_other_checksums_are_differences():
    path = DATA / "images" / "reference.json"
    ref = json.loads(path.read_text(encoding="utf-8"))
    name = next(iter(ref["photos"]))
    nan = json.loads(json.dumps(ref))
    v = np.full_like(np.frombuffer(base64.b64decode(ref["photos"][name]["embedding"]), "<f4"), np.nan)
    nan["photos"][name]["embedding"] = base64.b64encode(v.tobytes()).decode()
    assert status(path, path.read_bytes(), json.dumps(nan).encode()) == "DIFFERENT"
    # A sha256 is valid base64 too: it is compared as text, never as a vector.
    other = json.loads(json.dumps(ref))
    key = next(k for k, v in other["_provenance"].items() if isinstance(v, str) and len(v) == 64)
    other["_provenance"][key] = "0" * 64
    assert status(path, path.read_bytes(), json.dumps(other).encode()) == "DIFFERENT"


def test_a_checksum_of_a_rebuilt_file_that_passed_is_read_as_the_committed_one():
    import hashlib

    provenance = EFFNET / "PROVENANCE.md"
    text = provenance.read_text(encoding="utf-8")
    model = (EFFNET / "model.onnx").read_bytes()
    old_sha, old_size = hashlib.sha256(model).hexdigest(), len(model)
    new_sha, new_size = "f" * 64, old_size + 10
    rebuilt = text.replace(old_sha, new_sha).replace(str(old_size), str(new_size)).encode()
    assert reproduce.compare("embedding_core/models/efficientnet-lite0/PROVENANCE.md",
                             text.encode(), rebuilt)[0] == "DIFFERENT"
    renamed = {new_sha: old_sha, str(new_size): str(old_size)}
    assert reproduce.compare("embedding_core/models/efficientnet-lite0/PROVENANCE.md",
                             text.encode(), rebuilt, renamed)[0] == "close"
    # The held-out reference states the digest of its own vectors: a rebuild whose vectors are
    # close states another digest, which is accepted with them.
    path = DATA / "minilm_heldout_reference.json"
    ref = json.loads(path.read_text(encoding="utf-8"))
    vecs = [np.frombuffer(base64.b64decode(e), "<f4") + np.float32(1e-7) for e in ref["embeddings_f32"]]
    near = json.loads(json.dumps(ref))
    near["embeddings_f32"] = [base64.b64encode(x.astype("<f4").tobytes()).decode() for x in vecs]
    near["_provenance"]["embeddings_sha256"] = hashlib.sha256(b"".join(x.astype("<f4").tobytes() for x in vecs)).hexdigest()
    assert status(path, path.read_bytes(), json.dumps(near).encode()) == "close"
    near["_provenance"]["embeddings_sha256"] = "0" * 64
    assert status(path, path.read_bytes(), json.dumps(near).encode()) == "DIFFERENT"


def test_reproduce_compares_what_a_rebuild_may_change_and_nothing_else():
    r = reproduce
    minilm = (ROOT / "embedding_core" / "models" / "all-MiniLM-L6-v2" / "PROVENANCE.md").read_text()
    # a measurement 5e-5 off is not a last-bits difference
    assert r.compare("x/PROVENANCE.md", minilm.encode(),
                     minilm.replace("min 0.9986314", "min 0.9986814").encode())[0] == "DIFFERENT"
    # a field the committed file does not have
    assert r.compare("x/a.json", b'{"a": 1}', b'{"a": 1, "b": 2}')[0] == "DIFFERENT"
    assert r.compare("x/a.json", b'{"a": 1, "b": 2}', b'{"a": 1}')[0] == "DIFFERENT"
    # only the vector fields are read as base64 float32: another string is text
    v1 = base64.b64encode(np.array([1, 2, 3], "<f4").tobytes()).decode()
    v2 = base64.b64encode(np.array([1, 2, 3.0000002], "<f4").tobytes()).decode()
    assert r.compare("x/a.json", json.dumps({"embedding": v1}).encode(),
                     json.dumps({"embedding": v2}).encode())[0] == "close"
    assert r.compare("x/a.json", json.dumps({"model": v1}).encode(),
                     json.dumps({"model": v2}).encode())[0] == "DIFFERENT"
    # an array of another dtype is another file, even with the same values
    a, b = io.BytesIO(), io.BytesIO()
    np.save(a, np.arange(6, dtype=np.float32).reshape(2, 3))
    np.save(b, np.arange(6, dtype=np.float64).reshape(2, 3))
    assert r.compare("x/a.npy", a.getvalue(), b.getvalue())[0] == "DIFFERENT"


@pytest.mark.parametrize("script, rc, shown", [
    ("open('data/out.txt', 'w').write('made\\n')", 0, "identical"),
    ("pass", 1, "MISSING"),                                           # wrote nothing
    ("open('data/out.txt', 'w').write('made\\n'); open('data/extra.txt', 'w').write('x')", 1,
     "UNLISTED"),                                                     # and a file not listed
    ("open('data/out.txt', 'w').write('made\\n'); raise SystemExit(3)", 1, "FAILED (exit 3)"),
])
def test_reproduce_fails_on_a_step_that_is_not_a_clean_rebuild(tmp_path, monkeypatch, capsys,
                                                                 script, rc, shown):
    r = reproduce
    root = tmp_path / "checkout"
    git_repo(root, {"data/out.txt": "made\n", ".gitignore": "build/\n"})
    monkeypatch.setattr(r, "ROOT", root)
    monkeypatch.setattr(r, "TOOLS", r.Path(sys.executable))
    monkeypatch.setattr(r, "APP", r.Path(sys.executable))
    monkeypatch.setattr(r, "recorded_python", lambda: None)
    monkeypatch.setattr(r, "steps", lambda work: [
        r.Step("data", r.Path(sys.executable), ["-c", script], ["data/out.txt"])])
    assert r.main([]) == rc
    assert shown in capsys.readouterr().out
