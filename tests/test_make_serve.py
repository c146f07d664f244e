"""`make serve`, the README's first command: the key a user sets reaches the server unchanged,
and the curl it prints works (found by a new-user walkthrough, h_user: a '$' was eaten by make,
a "'" broke the shell, and a name:key entry was printed whole as the key to send)."""

from __future__ import annotations

import json
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from live_server import LiveServer
from test_http_errors import request
from tools.local_host import LOCAL_DEV_KEY, hint

pytestmark = pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")
ROOT = Path(__file__).resolve().parent.parent

SECRET = "ab$cd'ef\"gh-0123456789"       # printable ASCII, as the README allows
HELLO = {"input": ["hello world"]}


def serve(env: dict[str, str]) -> LiveServer:
    """``make serve`` without its install step (never a pip install in a test: review h_diff9
    F7), in the virtualenv running this suite (``VENV=``): .venv for the README's ``make test``,
    CI's .venv-py312, -py313 and -py314 on the other Pythons, so ``make serve`` is tried on each.
    Variables a calling ``make`` passes down (``MAKEFLAGS``) are not inherited."""
    venv = Path(sys.prefix)
    if venv.parent != ROOT or not (venv / ".serve-installed").exists():
        pytest.skip(f"make serve runs a virtualenv of this checkout made by make; {venv} is not")
    return LiveServer({"MAKEFLAGS": "", **env},
                      command=["make", "-s", "-o", f"{venv.name}/.serve-installed", "serve",
                               f"VENV={venv.name}", "PORT=0"])


def interpreter(make: int) -> str | None:
    """The executable of the process ``make`` (pid) started (Linux's /proc; else None)."""
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            if int(stat.read_text().rsplit(")", 1)[1].split()[1]) == make:
                return str((stat.parent / "exe").resolve())
        except (OSError, ValueError, IndexError):
            continue
    return None


def test_a_key_with_shell_and_make_characters_reaches_the_server_unchanged():
    s = serve({"EMBEDDINGS_API_KEYS": f"alice:{SECRET}"})
    try:
        if Path("/proc/self/stat").exists():       # served by this suite's Python, not another
            assert interpreter(s.proc.pid) == str(Path(sys.executable).resolve())
        status, _, body = request(s, "POST", "/v1/embeddings", HELLO, {"api-key": SECRET})
        assert status == 200, body
        assert request(s, "POST", "/v1/embeddings", HELLO,
                       {"api-key": f"alice:{SECRET}"})[0] == 401
    finally:
        s.stop()
    printed = s.output()
    assert "key:alice" in printed and SECRET not in printed, printed


def test_the_printed_curl_works_with_the_default_key():
    s = serve({})
    try:
        deadline = time.monotonic() + 10      # printed before it serves; read by a thread
        while "Try: " not in s.output():
            assert time.monotonic() < deadline, s.output()
            time.sleep(0.01)
        lines = s.output().splitlines()
        [curl] = [line.removeprefix("Try: ") for line in lines if line.startswith("Try: ")]
        argv = shlex.split(curl)
        assert argv[0] == "curl" and f"api-key: {LOCAL_DEV_KEY}" in argv
        [url] = [a for a in argv if a.startswith("http://")]
        assert url.startswith(s.url + "/"), (url, s.url)
        headers = dict(argv[i + 1].split(": ", 1) for i, a in enumerate(argv) if a == "-H")
        body = json.loads(argv[argv.index("-d") + 1])
        status, _, data = request(s, "POST", url[len(s.url):], body, headers)   # as curl would
        assert status == 200 and len(json.loads(data)["data"]) == 1, data
    finally:
        s.stop()


@pytest.mark.parametrize("env, shows, hides", [
    ({"EMBEDDINGS_API_KEYS": LOCAL_DEV_KEY}, [f"'api-key: {LOCAL_DEV_KEY}'"], []),
    ({"EMBEDDINGS_API_KEYS": f"alice:{SECRET},bob:{SECRET[::-1]}"},
     ["key:alice, key:bob", '"api-key: $KEY"'], [SECRET, SECRET[::-1]]),
    ({"EMBEDDINGS_API_KEYS": json.dumps({"carol": SECRET})}, ["key:carol"], [SECRET]),
    ({"EMBEDDINGS_API_KEYS": "tiny-key"}, ["every request gets 401"], ["tiny-key"]),
    ({"EMBEDDINGS_AUTH": "disabled"}, ["disabled"], ["api-key"]),
    # where the app refuses the README's key (on Azure), it is not offered either
    ({"EMBEDDINGS_API_KEYS": LOCAL_DEV_KEY, "WEBSITE_SKU": "FlexConsumption"},
     ["every request gets 401"], [LOCAL_DEV_KEY]),
])
def test_the_hint_names_the_callers_and_never_prints_a_key_the_user_set(env, shows, hides):
    text = "\n".join(hint(env, "127.0.0.1", 7071))
    for part in shows:
        assert part in text, text
    for part in hides:
        assert part not in text, text
    assert "http://127.0.0.1:7071/embeddings?api-version=" in text or "401" in text
    assert "Warning" not in text                                # loopback


@pytest.mark.parametrize("env, first", [
    ({"EMBEDDINGS_API_KEYS": LOCAL_DEV_KEY, "EMBEDDINGS_MAX_INPUTS": "many"},
     "Configuration error: setting EMBEDDINGS_MAX_INPUTS must be an integer, got 'many'. Every "
     "request answers 500 until it is fixed."),
    ({"EMBEDDINGS_API_KEYS": f"alice:{SECRET},bob:short-key"},
     "Not accepted: EMBEDDINGS_API_KEYS entry 2 (name 'bob') is shorter than 16 characters"),
    ({"EMBEDDINGS_API_KEYS": "@Microsoft.KeyVault(SecretUri=https://kv-x.vault.azure.net/secrets/k/)"},
     "Not accepted: EMBEDDINGS_API_KEYS is an unresolved Key Vault reference"),
    ({"EMBEDDINGS_ENTRA_TENANT_ID": "72f988bf-86f1-41af-91ab-2d7cd011db47"},
     "Configuration error: EMBEDDINGS_ENTRA_TENANT_ID is set but EMBEDDINGS_ENTRA_AUDIENCES is "
     "empty"),
])
def test_the_hint_says_at_start_what_the_app_would_refuse_at_the_first_request(env, first):
    """A wrong setting (every request a 500) or a refused key entry is said under "Serving",
    not only in the log of the first request; never with a key."""
    lines = hint(env, "127.0.0.1", 7071)
    assert lines[0].startswith(first), lines
    assert ".." not in lines[0]
    text = "\n".join(lines)
    assert SECRET not in text and "short-key" not in text and "kv-x" not in text, text
    if "alice" in text:
        assert "keys accepted for key:alice" in text
    elif "Key Vault" in text:
        assert lines[-1] == "No key of EMBEDDINGS_API_KEYS is accepted (above: why): every " \
            "request gets 401."


def test_the_hint_says_at_start_what_is_wrong_with_a_replacement_registry(tmp_path):
    """A replacement registry (EMBEDDINGS_REGISTRY) the app would refuse at its first request,
    every request a 500, is named under "Serving" too: one it cannot read, one with a wrong
    field. A good one (the shipped registry, named) is not."""
    shipped = json.loads((ROOT / "embedding_core" / "registry.json").read_text(encoding="utf-8"))
    good, bad = ROOT / "embedding_core" / "registry.json", tmp_path / "bad.json"
    shipped["deployments"][0]["aliases"] = "all-minilm"
    bad.write_text(json.dumps(shipped))
    base = {"EMBEDDINGS_API_KEYS": LOCAL_DEV_KEY}
    first = {name: hint({**base, "EMBEDDINGS_REGISTRY": str(path)}, "127.0.0.1", 7071)[0]
             for name, path in (("missing", tmp_path / "none.json"), ("bad", bad), ("good", good))}
    assert first["missing"].startswith(
        f"Configuration error: EMBEDDINGS_REGISTRY: cannot read registry {tmp_path / 'none.json'}")
    assert first["bad"] == ("Configuration error: EMBEDDINGS_REGISTRY: deployments[0]: 'aliases' "
                            "must be a JSON array. Every request answers 500 until it is fixed.")
    assert first["good"] == f"Local development API key: {LOCAL_DEV_KEY}", first["good"]


@pytest.mark.parametrize("host, reach, warned", [
    ("127.0.0.1", "127.0.0.1", False), ("::1", "[::1]", False), ("localhost", "localhost", False),
    ("LOCALHOST", "LOCALHOST", False), ("::ffff:127.0.0.1", "[::ffff:127.0.0.1]", False),
    ("0.0.0.0", "127.0.0.1", True), ("::", "[::1]", True), ("192.0.2.7", "192.0.2.7", True)])
def test_the_hint_reaches_the_address_and_warns_beyond_this_machine(host, reach, warned):
    """IPv6 in brackets, every interface through loopback; the development key (published in
    the README) or no authentication beyond loopback is warned about (review h_diff9 F5)."""
    for env in ({"EMBEDDINGS_API_KEYS": LOCAL_DEV_KEY}, {"EMBEDDINGS_AUTH": "disabled"}):
        text = "\n".join(hint(env, host, 7071))
        assert f"'http://{reach}:7071/embeddings?" in text, text
        assert ("anyone who reaches this address can call it" in text) is warned, text
    text = "\n".join(hint({"EMBEDDINGS_API_KEYS": f"alice:{SECRET}"}, host, 7071))
    assert "Warning" not in text                     # a key of the user's own
    text = "\n".join(hint({"EMBEDDINGS_API_KEYS": f"alice:{SECRET},{LOCAL_DEV_KEY}"}, host, 7071))
    assert ("the development key" in text) is warned, text      # among them (h_diff10 N4)
    text = "\n".join(hint({"EMBEDDINGS_API_KEYS": f"alice:{SECRET}",
                           "EMBEDDINGS_AUTH": "disabled"}, host, 7071))
    assert ("Remove EMBEDDINGS_AUTH=disabled" in text) is warned, text



def test_make_serve_installs_the_app_and_the_local_host_and_make_test_adds_its_toolchain():
    """What each command would run (`make -n -B`: printed, nothing installed): serving installs
    requirements-serve.txt only, and `make install` (the start of `make test`) adds
    requirements-dev.txt after it, into the same .venv (review h_diff13 F2)."""
    def planned(target: str) -> list[str]:
        out = subprocess.run(["make", "-n", "-B", target], cwd=ROOT, capture_output=True,
                             text=True, timeout=30, check=True).stdout
        return [line for line in out.splitlines() if "pip install" in line and " -r " in line]
    serve_plan = planned("serve")
    assert len(serve_plan) == 1 and serve_plan[0].endswith("-r requirements-serve.txt"), serve_plan
    install_plan = planned("install")
    assert [line.rsplit(" ", 1)[1] for line in install_plan] == ["requirements-serve.txt",
                                                                 "requirements-dev.txt"]
    serve_reqs = (ROOT / "requirements-serve.txt").read_text()
    assert "-r requirements.txt" in serve_reqs and "uvicorn==" in serve_reqs
    assert "-r requirements-serve.txt" in (ROOT / "requirements-dev.txt").read_text()
