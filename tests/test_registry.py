"""The deployment registry: data, lookup, checksums, lazy loading."""

import json
import sys
import threading
from pathlib import Path

import pytest

from embedding_core.errors import ApiError
from embedding_core.registry import DEFAULT_REGISTRY, FileRef, Registry, RegistryError, parse_registry
from embedding_core.settings import Settings


def _doc():
    return json.loads(DEFAULT_REGISTRY.read_text())


def test_shipped_registry_describes_minilm():
    reg = Registry.from_settings(Settings.from_env({}))
    dep = reg.find("all-MiniLM-L6-v2")
    assert dep.modality == "text" and dep.dimensions == 384 and dep.max_tokens == 256
    assert dep.matryoshka_dimensions == () and dep.prompts == {}
    assert reg.find("MINILM") is dep  # aliases, case-insensitive
    assert reg.default_for("text") is dep


def test_every_shipped_file_matches_its_checksum():
    reg = Registry.from_settings(Settings.from_env({}))
    for dep in reg.deployments:
        for ref in dep.files.values():
            assert ref.verified().is_file()


def test_checksum_mismatch_is_refused(tmp_path):
    f = tmp_path / "model.onnx"
    f.write_bytes(b"not the model")
    with pytest.raises(ValueError, match="sha256"):
        FileRef(f, "0" * 64, None).verified()
    with pytest.raises(ValueError, match="size"):
        FileRef(f, "0" * 64, 99).verified()
    # ... also when checked on another thread while the caller loads (FileRef.verifying)
    with pytest.raises(ValueError, match="sha256"):
        FileRef(f, "0" * 64, None).verifying()()
    import hashlib
    assert FileRef(f, hashlib.sha256(b"not the model").hexdigest(), 13).verifying()() == f


def test_replacement_registry_from_the_environment(tmp_path):
    doc = _doc()
    text = next(d for d in doc["deployments"] if d["modality"] == "text")
    text = {**text, "name": "my-minilm", "aliases": []}
    # Relative paths resolve against the replacement file's folder.
    text["files"] = {**text["files"], "tokenizer": {
        **text["files"]["tokenizer"],
        "path": str(DEFAULT_REGISTRY.parent / text["files"]["tokenizer"]["path"])}}
    text["calibration"] = str(DEFAULT_REGISTRY.parent / text["calibration"])
    path = tmp_path / "registry.json"
    path.write_text(json.dumps({"deployments": [text]}))
    reg = Registry.from_settings(Settings.from_env({"EMBEDDINGS_REGISTRY": str(path)}))
    assert [d.name for d in reg.deployments] == ["my-minilm"]
    assert reg.calibration(reg.deployments[0]).get(384) is not None


@pytest.mark.parametrize("mutate, message", [
    (lambda d: d.update(modality="audio"), "modality"),
    (lambda d: d.update(backend="nope"), "backend"),
    (lambda d: d.update(prompts={"search": "x"}), "prompts"),
    (lambda d: d.update(matryoshka_dimensions=[512]), "matryoshka"),
    (lambda d: d.pop("dimensions"), "dimensions"),
])
def test_malformed_registry_is_refused(mutate, message):
    doc = _doc()
    mutate(doc["deployments"][0])
    with pytest.raises(RegistryError, match=message):
        parse_registry(doc, DEFAULT_REGISTRY.parent)


def test_duplicate_names_are_refused():
    doc = _doc()
    doc["deployments"].append(dict(doc["deployments"][0]))
    with pytest.raises(RegistryError, match="twice"):
        parse_registry(doc, DEFAULT_REGISTRY.parent)


def test_select_by_model_header_and_conflicts():
    reg = Registry.from_settings(Settings.from_env({}))
    assert reg.select("text", "/embeddings", "minilm", "all-MiniLM-L6-v2").name == "all-MiniLM-L6-v2"
    with pytest.raises(ApiError) as e:
        reg.select("text", "/embeddings", "gpt-4", None)
    assert (e.value.status, e.value.code, e.value.target) == (404, "ModelNotFound", "model")


def test_missing_model_package_is_a_503(tmp_path):
    doc = _doc()
    text = next(d for d in doc["deployments"] if d["modality"] == "text")
    text["files"]["model"]["package"] = "no_such_package_xyz"
    reg = Registry(parse_registry({"deployments": [text]}, DEFAULT_REGISTRY.parent),
                   Settings.from_env({}))
    with pytest.raises(ApiError) as e:
        reg.backend(reg.deployments[0])
    assert e.value.status == 503 and e.value.code == "ModelUnavailable"
    assert "Retry-After" in e.value.headers


def test_backend_loads_once_across_threads():
    reg = Registry.from_settings(Settings.from_env({}))
    dep = reg.default_for("text")
    assert not reg.is_loaded(dep)
    got = []
    threads = [threading.Thread(target=lambda: got.append(reg.backend(dep))) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len({id(b) for b in got}) == 1 and reg.is_loaded(dep)


def test_importing_function_app_loads_no_model():
    import subprocess

    code = ("import sys, function_app, embedding_core.service, embedding_core.registry; "
            "print('onnxruntime' in sys.modules, 'tokenizers' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=Path(__file__).resolve().parent.parent)
    assert out.stdout.split() == ["False", "False"]
