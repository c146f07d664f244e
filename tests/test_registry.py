"""The deployment registry: data, lookup, checksums, lazy loading."""

import json
import sys
import threading
from pathlib import Path

import pytest

from conftest import registry_of, shipped_deployments
from embedding_core.errors import ApiError
from embedding_core.registry import (DEFAULT_REGISTRY, FileRef, ModelFileError, Registry,
                                     RegistryError, parse_registry)
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
    text["calibration"] = {**text["calibration"],
                           "path": str(DEFAULT_REGISTRY.parent / text["calibration"]["path"])}
    path = tmp_path / "registry.json"
    path.write_text(json.dumps({"deployments": [text]}))
    reg = Registry.from_settings(Settings.from_env({"EMBEDDINGS_REGISTRY": str(path)}))
    assert [d.name for d in reg.deployments] == ["my-minilm"]
    assert reg.calibration(reg.deployments[0]).get(384) is not None


@pytest.mark.parametrize("mutate, message", [
    (lambda d: d.update(modality="audio"), "modality"),
    (lambda d: d.update(backend="nope"), "backend"),
    (lambda d: d.update(modality="image"), "backend 'text-onnx' serves text, not image"),
    (lambda d: d.update(prompts={"search": "x"}), "prompts"),
    (lambda d: d.update(prompts={"query": 1}), "prompts must be strings"),
    (lambda d: d.update(prompts=["query: "]), "'prompts' must be a JSON object"),
    (lambda d: d.update(matryoshka_dimensions=[512]), "matryoshka"),
    (lambda d: d.pop("dimensions"), "dimensions"),
    (lambda d: d.update(dimensions=-5), "'dimensions' must be at least 1"),
    (lambda d: d.update(dimensions=0), "'dimensions' must be at least 1"),
    (lambda d: d.update(dimensions="384"), "'dimensions' must be a JSON integer"),
    (lambda d: d.update(max_tokens=-1), "'max_tokens' must be at least 1"),
    (lambda d: d.update(default="false"), "'default' must be a JSON boolean"),
    (lambda d: d.update(aliases="e5"), "'aliases' must be a JSON array"),
    (lambda d: d.update(aliases=["ok", 5]), "names must be non-empty strings"),
    (lambda d: d.update(name=" "), "names must be non-empty strings"),
    (lambda d: d.update(name=7), "'name' must be a JSON string"),
    (lambda d: d.update(options=[]), "'options' must be a JSON object"),
    (lambda d: d.update(files=[]), "'files' must be a JSON object"),
    (lambda d: d["files"]["model"].update(sha256="abc"), "64 hexadecimal digits"),
    (lambda d: d["files"]["model"].update(bytes="abc"), "'bytes' must be a non-negative integer"),
    (lambda d: d.update(calibration=5), "'calibration' must be a path or an object"),
    (lambda d: d["calibration"].pop("sha256"), "calibration: 'sha256'"),
])
def test_malformed_registry_is_refused(mutate, message):
    doc = _doc()
    mutate(doc["deployments"][0])
    with pytest.raises(RegistryError, match=message):
        parse_registry(doc, DEFAULT_REGISTRY.parent)


def test_a_deployment_that_is_not_an_object_is_refused_naming_it():
    doc = _doc()
    doc["deployments"].append("all-MiniLM-L6-v2")
    with pytest.raises(RegistryError, match=r"deployments\[4\]: must be an object"):
        parse_registry(doc, DEFAULT_REGISTRY.parent)


def test_a_dotted_package_whose_parent_is_missing_is_a_503_for_that_deployment_only():
    doc = _doc()
    text = next(d for d in doc["deployments"] if d["modality"] == "text")
    text["files"]["model"]["package"] = "no_such_package_xyz.models"
    reg = Registry(parse_registry(doc, DEFAULT_REGISTRY.parent), Settings.from_env({}))
    with pytest.raises(ApiError) as e:
        reg.backend(reg.find(text["name"]))
    assert e.value.status == 503 and e.value.code == "ModelUnavailable"


@pytest.mark.parametrize("damage", ["missing", "edited", "truncated"])
def test_a_calibration_file_that_fails_is_a_503_remembered_for_retry_after(tmp_path, damage):
    doc = _doc()
    text = next(d for d in doc["deployments"] if d["modality"] == "text")
    source = DEFAULT_REGISTRY.parent / text["calibration"]["path"]
    copy = tmp_path / "calibration.json"
    data = source.read_bytes()
    if damage == "edited":
        copy.write_bytes(data.replace(b"0.", b"1.", 1))
    elif damage == "truncated":
        copy.write_bytes(data[: len(data) // 2])
    text["calibration"] = {**text["calibration"], "path": str(copy)}
    reg = Registry(parse_registry({"deployments": [text]}, DEFAULT_REGISTRY.parent),
                   Settings.from_env({"EMBEDDINGS_RETRY_AFTER_SECONDS": "30"}))
    dep = reg.deployments[0]
    for _ in range(2):   # the second time from memory
        with pytest.raises(ApiError) as e:
            reg.calibration(dep)
        assert e.value.status == 503 and e.value.headers["Retry-After"] == "30"
    copy.write_bytes(data)
    with pytest.raises(ApiError):   # still remembered
        reg.calibration(dep)
    reg._failed_until.clear()       # Retry-After has passed
    assert reg.calibration(dep).get(384) is not None


def test_a_deployment_that_loads_after_failing_is_no_longer_failed(tmp_path):
    """/health's "degraded" (Registry.load_failed) ends once the deployment loads: its tokenizer
    missing at first (a 503), then in place."""
    text = next(d for d in shipped_deployments() if d["name"] == "all-MiniLM-L6-v2")
    source = Path(text["files"]["tokenizer"]["path"])
    text["files"]["tokenizer"]["path"] = str(tmp_path / "tokenizer.json")
    reg = registry_of([text])
    dep = reg.deployments[0]
    with pytest.raises(ApiError) as e:
        reg.backend(dep)
    assert e.value.status == 503 and reg.load_failed(dep)
    (tmp_path / "tokenizer.json").write_bytes(source.read_bytes())
    reg._failed_until.clear()       # Retry-After has passed
    assert reg.backend(dep).encode(["hello"]).vectors.shape == (1, 384)
    assert not reg.load_failed(dep)


def test_special_tokens_missing_from_the_vocabulary_fail_the_load(caplog):
    # e.g. options copied from an XLM-R entry: every request would have been a 500
    doc = _doc()
    text = next(d for d in doc["deployments"] if d["modality"] == "text")
    text["options"] = {**text["options"], "cls_token": "<s>"}
    reg = Registry(parse_registry({"deployments": [text]}, DEFAULT_REGISTRY.parent),
                   Settings.from_env({}))
    with pytest.raises(ApiError) as e:
        reg.backend(reg.deployments[0])
    assert e.value.status == 503 and e.value.code == "ModelUnavailable"
    assert "options.cls_token '<s>' is not in the tokenizer's vocabulary" in caplog.text


SERVICE_KEY = "registry-test-key-0000"


def service_with(tmp_path, deployment: dict):
    """A service whose registry holds only ``deployment`` (an entry of the shipped registry,
    its file paths made absolute), with the key SERVICE_KEY."""
    from embedding_core.service import EmbeddingService

    for ref in [*deployment["files"].values(), deployment["calibration"]]:
        ref["path"] = str(DEFAULT_REGISTRY.parent / ref["path"])
    path = tmp_path / "registry.json"
    path.write_text(json.dumps({"deployments": [deployment]}))
    return EmbeddingService.from_env({"EMBEDDINGS_REGISTRY": str(path),
                                      "EMBEDDINGS_API_KEYS": SERVICE_KEY})


def test_an_unknown_model_on_a_route_without_deployments_of_its_kind(tmp_path):
    """Only the route's kind of deployment is offered; with none, the 404 says so (it said
    "Available: .")."""
    from conftest import post

    text = next(d for d in _doc()["deployments"] if d["modality"] == "text")
    svc = service_with(tmp_path, text)
    res = post(svc, {"input": [{"image": "data:image/png;base64,AAAA"}], "model": "nope"},
               path="/images/embeddings", headers={"api-key": SERVICE_KEY})
    assert res.status == 404
    assert res.json()["error"]["message"] == "No deployment named 'nope'. None is configured."


def test_an_unknown_model_on_info_lists_every_deployment(service):
    """GET /info takes a deployment of any kind, so its 404 lists them all (it listed only the
    text ones; found by h_user)."""
    from conftest import KEY
    from embedding_core.api import ApiRequest

    res = service.info(ApiRequest("GET", "/info", {"api-key": KEY},
                                  {"api-version": "2024-05-01-preview", "model": "nope"}, b""))
    assert res.status == 404
    message = res.json()["error"]["message"]
    for d in _doc()["deployments"]:
        assert d["name"] in message, message
    assert any(d["modality"] == "image" for d in _doc()["deployments"])


def test_declared_dimensions_that_the_model_does_not_give_are_a_500_that_says_so(tmp_path, caplog):
    from conftest import post

    text = next(d for d in _doc()["deployments"] if d["modality"] == "text")
    svc = service_with(tmp_path, {**text, "dimensions": 768})
    res = post(svc, {"input": ["hello"]}, headers={"api-key": SERVICE_KEY})
    assert res.status == 500 and res.json()["error"]["code"] == "InternalServerError"
    assert "declares 768 dimensions but its model gives 384" in caplog.text


def test_openai_model_lookup_of_an_image_deployment_without_text_deployments(tmp_path):
    from embedding_core.service import ApiRequest

    image = next(d for d in _doc()["deployments"] if d["name"] == "efficientnet-lite0")
    svc = service_with(tmp_path, image)
    res = svc.handle("v1/models/{model}", ApiRequest(
        "GET", "/v1/models/efficientnet-lite0", {"api-key": SERVICE_KEY}, {}, b"",
        route_params={"model": "efficientnet-lite0"}))
    assert res.status == 404
    assert res.json()["error"]["message"] == (
        "Deployment 'efficientnet-lite0' embeds images, and the OpenAI route serves text "
        "deployments only: none is configured.")


def test_duplicate_names_are_refused():
    doc = _doc()
    doc["deployments"].append(dict(doc["deployments"][0]))
    with pytest.raises(RegistryError, match="twice"):
        parse_registry(doc, DEFAULT_REGISTRY.parent)
    doc = _doc()          # names are looked up whatever their case: one would hide the other
    doc["deployments"][1]["aliases"] = ["ALL-MINILM-L6-V2"]
    with pytest.raises(RegistryError, match="twice"):
        parse_registry(doc, DEFAULT_REGISTRY.parent)


def test_one_default_per_modality_chosen_by_its_flag_not_its_place():
    doc = _doc()
    assert [d["name"] for d in doc["deployments"][:2]] == ["all-MiniLM-L6-v2",
                                                         "all-MiniLM-L6-v2-exact"]
    doc["deployments"][1]["default"] = True
    with pytest.raises(RegistryError, match="more than one default text deployment"):
        parse_registry(doc, DEFAULT_REGISTRY.parent)
    doc["deployments"][0]["default"] = False
    reg = Registry(parse_registry(doc, DEFAULT_REGISTRY.parent), Settings.from_env({}))
    assert reg.default_for("text").name == "all-MiniLM-L6-v2-exact"


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


def test_a_load_failing_the_same_way_again_is_one_line_and_waits_longer(caplog):
    """A damaged file does not mend by itself: the same failure again is logged without its
    traceback and tried again after twice the last wait, up to a minute; another failure, or one
    after a success, starts over."""
    import logging
    import time

    from embedding_core.registry import note_load_failure

    until: dict = {}
    history: dict = {}

    def fail(exc):
        try:
            raise exc
        except Exception:  # noqa: BLE001
            start = time.monotonic()
            note_load_failure(until, history, "m", 1.0, "deployment %s failed to load", "d")
            return round(until["m"] - start)

    with caplog.at_level(logging.ERROR, logger="embedding_core.registry"):
        waits = [fail(ValueError("model.onnx: sha256 mismatch")) for _ in range(8)]
        assert waits == [1, 2, 4, 8, 16, 32, 60, 60]
        assert fail(FileNotFoundError("model file missing: model.onnx")) == 1
    records = [r for r in caplog.records if "failed to load" in r.getMessage()]
    assert len(records) == 9 and [bool(r.exc_info) for r in records] == [True] + [False] * 7 + [True]
    assert "failed to load again, as before (ValueError: model.onnx: sha256 mismatch); next " \
           "attempt in 2 s" in records[1].getMessage()


@pytest.mark.parametrize("exc, lasting", [
    (ModelFileError("model.onnx: sha256 mismatch"), True),
    (ModelFileError("model file missing: model.onnx"), True),
    (MemoryError(), False),
    (RuntimeError("[ONNXRuntimeError] : 7 : INVALID_PROTOBUF"), False)])
def test_only_a_models_file_failure_tells_clients_not_to_retry(exc, lasting):
    """A file that is missing or fails its checksum is the package's fault: its 503 (when it
    fails and while the failure is remembered, for the deployment or a part loaded by its first
    input) has ``x-should-retry: false``; a load failing otherwise (memory) may pass next time."""
    from embedding_core.registry import load_failed, note_load_failure

    until: dict = {}
    history: dict = {}
    assert load_failed("d", until, history, "d model", 5) is None   # nothing failed yet
    try:
        try:
            raise exc
        except Exception as inner:  # noqa: BLE001 - as a loader wrapping it would
            raise RuntimeError("could not load") from inner
    except Exception:  # noqa: BLE001
        note_load_failure(until, history, "d model", 5, "deployment %s failed to load", "d")
    answer = load_failed("d", until, history, "d model", 5)
    assert answer is not None and answer.status == 503 and answer.headers["Retry-After"] == "5"
    assert answer.headers.get("x-should-retry") == ("false" if lasting else None)


@pytest.mark.parametrize("damage", ["checksum", "session"])
def test_health_is_degraded_while_a_deployment_fails_to_load(damage):
    """A model failing its checksum, or whose session cannot be created (a file that passes
    its checksum but is no model), answers every call 503; /health said "ok", as on a cold
    instance (review h_ops1 2, h_review26 2). Once a request has tried it: "degraded", naming
    it; the other deployments unaffected."""
    from embedding_core.api import ApiRequest
    from embedding_core.service import EmbeddingService

    doc = _doc()
    text = next(d for d in doc["deployments"] if d["name"] == "all-MiniLM-L6-v2")
    text["files"]["model"] = ({**text["files"]["model"], "sha256": "0" * 64}
                              if damage == "checksum" else dict(text["files"]["tokenizer"]))
    settings = Settings.from_env({"EMBEDDINGS_API_KEYS": "k" * 20})
    svc = EmbeddingService(settings, Registry(parse_registry(doc, DEFAULT_REGISTRY.parent),
                                              settings))

    def health():
        res = svc.health(ApiRequest("GET", "/health", {}, {}, b""))
        assert res.status == 200
        return res.json()

    assert health()["status"] == "ok" and "problems" not in health()
    res = svc.embeddings(ApiRequest("POST", "/embeddings", {"api-key": "k" * 20},
                                    {"api-version": "2024-05-01-preview"},
                                    b'{"input": ["hello"]}'))
    assert res.status == 503 and res.json()["error"]["code"] == "ModelUnavailable"
    got = health()
    assert got["status"] == "degraded"
    assert got["problems"] == ["deployment all-MiniLM-L6-v2 failed to load"]
    assert {d["name"]: d["failed"] for d in got["deployments"]}["all-MiniLM-L6-v2"] is True
    assert sum(d["failed"] for d in got["deployments"]) == 1
