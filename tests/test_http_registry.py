"""A replacement registry over HTTP: Matryoshka sizes, per-size calibration, and a model that
fails its checksum (503 with Retry-After)."""

from __future__ import annotations

import json
import sys
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from conftest import KEY, LONG_INPUTS_PREAMBLE, LiveServer, needs_long_inputs, shipped_deployments
from embedding_core.registry import DEFAULT_REGISTRY
from test_http_errors import AUTH, Q, request


def _text_entry() -> dict:
    return next(d for d in shipped_deployments() if d["name"] == "all-MiniLM-L6-v2")


@pytest.fixture(scope="module")
def matryoshka_server(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("registry")
    entry = {**_text_entry(), "name": "mini-matryoshka", "aliases": [], "default": True,
             "matryoshka_dimensions": [128, 100], "calibration": "calibration.json"}
    cal = json.loads((DEFAULT_REGISTRY.parent / "models/all-MiniLM-L6-v2/calibration.json").read_text())
    r384 = cal["ranges"]["384"]
    # A range for 128 (not for 100): int8 at 100 must be refused.
    cal["ranges"]["128"] = {"lo": [-0.3] * 128, "hi": [0.3] * 128}
    cal["ranges"]["384"] = r384
    (tmp / "calibration.json").write_text(json.dumps(cal))
    broken = {**_text_entry(), "name": "broken", "aliases": [], "default": False}
    broken["files"]["tokenizer"]["sha256"] = "0" * 64
    broken_long = {**_text_entry(), "name": "broken-long", "aliases": [], "default": False}
    broken_long["files"]["long_model"]["sha256"] = "0" * 64
    # A registry naming the wrong file as the model: it passes its checksum, and fails when the
    # first short input creates its session.
    not_a_model = {**_text_entry(), "name": "not-a-model", "aliases": [], "default": False}
    not_a_model["files"]["model"] = dict(not_a_model["files"]["tokenizer"])
    (tmp / "registry.json").write_text(json.dumps({"deployments": [entry, broken, broken_long,
                                                                   not_a_model]}))
    # The local host, with AMX claimed where the long-input tests claim it (conftest).
    host = ("import runpy, sys\n"
            "sys.argv = ['local_host', '--host', '127.0.0.1', '--port', '0']\n"
            "runpy.run_module('tools.local_host', run_name='__main__', alter_sys=True)\n")
    server = LiveServer({"EMBEDDINGS_API_KEYS": KEY, "EMBEDDINGS_REGISTRY": str(tmp / "registry.json"),
                         "EMBEDDINGS_RETRY_AFTER_SECONDS": "9"},
                        command=[sys.executable, "-c", LONG_INPUTS_PREAMBLE + host])
    yield server
    server.stop()


def embed(server, body):
    status, headers, data = request(server, "POST", "/embeddings" + Q, body, AUTH)
    return status, headers, json.loads(data)


def test_matryoshka_sizes_truncate_and_renormalise(matryoshka_server):
    _, _, full = embed(matryoshka_server, {"input": ["a small test"]})
    v = np.asarray(full["data"][0]["embedding"], dtype=np.float64)
    for size in (128, 100):
        status, _, doc = embed(matryoshka_server, {"input": ["a small test"], "dimensions": size})
        got = np.asarray(doc["data"][0]["embedding"])
        assert status == 200 and got.shape == (size,)
        assert np.allclose(got, v[:size] / np.linalg.norm(v[:size]), atol=1e-6)


def test_the_response_names_the_model_not_the_deployment(matryoshka_server):
    """The Azure response's ``model`` is the deployment's ``model_name`` (as /info's), not the
    deployment's name: the shipped deployments cannot tell, their names are their models'."""
    status, _, doc = embed(matryoshka_server, {"input": ["a small test", "two"]})
    assert status == 200, doc
    assert doc["object"] == "list" and [d["object"] for d in doc["data"]] == ["embedding"] * 2
    assert doc["model"] == "all-MiniLM-L6-v2"       # deployment "mini-matryoshka"


def test_per_size_calibration_and_bit_packing_rules(matryoshka_server):
    status, _, doc = embed(matryoshka_server, {"input": ["x"], "dimensions": 128,
                                               "encoding_format": "ubinary"})
    assert status == 200 and len(doc["data"][0]["embedding"]) == 16
    status, _, doc = embed(matryoshka_server, {"input": ["x"], "dimensions": 128,
                                               "encoding_format": "int8"})
    assert status == 200 and len(doc["data"][0]["embedding"]) == 128
    status, _, doc = embed(matryoshka_server, {"input": ["x"], "dimensions": 100,
                                               "encoding_format": "binary"})
    assert status == 422 and doc["error"]["target"] == "encoding_format"
    status, _, doc = embed(matryoshka_server, {"input": ["x"], "dimensions": 100,
                                               "encoding_format": "uint8"})
    assert status == 422 and "calibration" in doc["error"]["message"]
    status, _, doc = embed(matryoshka_server, {"input": ["x"], "dimensions": 64})
    assert status == 422 and "384, 128, 100" in doc["error"]["message"]


def test_model_failing_its_checksum_is_503_with_retry_after(matryoshka_server):
    for _ in range(2):  # the second answer comes from the remembered failure
        status, headers, doc = embed(matryoshka_server, {"input": ["x"], "model": "broken"})
        assert status == 503 and headers["retry-after"] == "9"
        assert headers["x-ms-error-code"] == "ModelUnavailable"
        # the package is wrong: a redeployment fixes it, a client's retry cannot (and it says so)
        assert headers["x-should-retry"] == "false"
        assert "sha256" not in doc["error"]["message"] and "/" not in doc["error"]["message"]
        assert "a redeployment fixes" in doc["error"]["message"]
        assert "right now" not in doc["error"]["message"]
    status, _, doc = embed(matryoshka_server, {"input": ["x"]})
    assert status == 200  # the other deployment is unaffected


def test_the_openai_sdk_does_not_retry_a_model_failing_its_checksum(matryoshka_server):
    """With its defaults (two retries after 0.5-8 s) the openai SDK sent a call for a deployment
    whose model fails its checksum three times, each a billed execution; it now fails at once
    with the server's 503."""
    import httpx2
    import openai

    sent = []
    with httpx2.Client(event_hooks={"request": [sent.append]}) as http:
        client = openai.OpenAI(base_url=matryoshka_server.url + "/v1", api_key=KEY,
                               http_client=http)
        assert client.max_retries == 2
        with pytest.raises(openai.InternalServerError) as failure:
            client.embeddings.create(input=["hello"], model="broken")
    assert len(sent) == 1 and failure.value.status_code == 503
    assert "The model of deployment 'broken' is not available" in failure.value.message


def test_a_model_that_fails_when_its_first_input_runs_is_503_with_retry_after(matryoshka_server):
    """The short-input model's session is created by the first batch that needs it, on the
    inference worker; failing there is the same 503 as failing at load, every time it is tried."""
    for _ in range(2):
        status, headers, doc = embed(matryoshka_server, {"input": ["x"], "model": "not-a-model"})
        assert status == 503 and headers["retry-after"] == "9", doc
        assert headers["x-ms-error-code"] == "ModelUnavailable"
        # a session that could not be created may be for want of memory: retryable
        assert "x-should-retry" not in headers
        assert doc["error"]["message"].endswith("is not available right now.")
    status, _, doc = embed(matryoshka_server, {"input": ["x"]})
    assert status == 200


@needs_long_inputs
def test_a_long_input_model_failing_its_checksum_is_503_and_short_inputs_still_work(
        matryoshka_server):
    """The long-input model loads on the first long input (openvino_session.py); if it fails,
    those requests get what a failed deployment gets, and the short-input model still serves."""
    long_text = " ".join(["rivers and trains and the long history of both"] * 20)
    for body in ({"input": [long_text]}, {"input": ["short", long_text]}):
        status, headers, doc = embed(matryoshka_server, {**body, "model": "broken-long"})
        assert status == 503 and headers["retry-after"] == "9", doc
        assert headers["x-ms-error-code"] == "ModelUnavailable"
        assert headers["x-should-retry"] == "false"
        assert "sha256" not in doc["error"]["message"] and "/" not in doc["error"]["message"]
    status, _, doc = embed(matryoshka_server, {"input": ["a short one"], "model": "broken-long"})
    assert status == 200 and len(doc["data"][0]["embedding"]) == 384


@needs_long_inputs
def test_short_requests_sharing_batches_with_failing_long_ones_still_succeed(matryoshka_server):
    """Requests arriving together share batches; when one's long input fails the batch, the
    others' short inputs are run again on their own and answered (inference_queue: each
    request's items apart)."""
    long_text = " ".join(["rivers and trains and the long history of both"] * 20)
    bodies = [{"input": [long_text] if i % 3 == 0 else [f"short sentence {i}"],
               "model": "broken-long"} for i in range(9)]
    with ThreadPoolExecutor(len(bodies)) as pool:
        got = list(pool.map(lambda b: embed(matryoshka_server, b), bodies))
    for body, (status, _, doc) in zip(bodies, got):
        expected = 503 if body["input"][0] == long_text else 200
        assert status == expected, (body["input"][0][:20], doc)
