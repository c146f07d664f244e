"""Which build of the app a process serves: a digest of the app's code, shown by ``GET /health``.

The digest is of the files that make the app's behaviour and that every deployment package
holds (``.funcignore`` ships these): ``function_app.py``, ``host.json``, the requirements, and the
package's Python modules and ``registry.json`` (which holds the models' sha256, so a changed
model changes it too). It is computed from the files as they are on disk, so the folder a
deployment was made from gives the same value (``scripts/smoke_deployed.py --expect-build local``,
which ``azure.yaml``'s post-deploy hook runs: it waits until the app answers with the build just
deployed, not an instance still running the previous one).

Standard library only: the smoke script imports it with a bare Python."""

from __future__ import annotations

import hashlib
import threading
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = Path(__file__).resolve().parent.name
# At the app's root: what the Functions host and the build read.
ROOT_FILES = ("function_app.py", "host.json", "requirements.txt", "requirements.lock")
# In the package: code and the registry (not the models' data files, which the registry pins).
PACKAGE_SUFFIXES = (".py",)
PACKAGE_FILES = ("registry.json",)
LENGTH = 12      # hex digits shown: 48 bits, plenty to tell builds apart

_lock = threading.Lock()
_current: list[str | None] = []     # [the digest] once computed


def files(root: Path = ROOT) -> list[Path]:
    """The files the digest covers, relative to ``root``, in a fixed order. Directories whose
    name starts with '.' and ``__pycache__`` are skipped (never shipped)."""
    found = [Path(name) for name in ROOT_FILES if (root / name).is_file()]
    package = root / PACKAGE
    for path in package.rglob("*"):
        rel = path.relative_to(root)
        if any(part.startswith(".") or part == "__pycache__" for part in rel.parts):
            continue
        if path.is_file() and (path.suffix in PACKAGE_SUFFIXES
                               or (path.parent == package and path.name in PACKAGE_FILES)):
            found.append(rel)
    # Sorted as strings: Windows paths compare case-blind, and a checkout there must agree with
    # the Linux instance.
    return sorted(found, key=lambda rel: rel.as_posix())


def digest(root: Path = ROOT) -> str:
    """The build of the app at ``root``: ``LENGTH`` hex digits of a sha256 over each covered
    file's path (with '/') and content. Raises OSError if a file cannot be read."""
    outer = hashlib.sha256()
    for rel in files(root):
        inner = hashlib.sha256((root / rel).read_bytes()).hexdigest()
        outer.update(f"{rel.as_posix()}\0{inner}\n".encode())
    return outer.hexdigest()[:LENGTH]


def current() -> str | None:
    """This process's build (computed once: a few milliseconds), or None if a file could not be
    read (``/health`` then says ``null`` rather than failing)."""
    with _lock:
        if not _current:
            try:
                _current.append(digest(ROOT))
            except OSError:
                _current.append(None)
        return _current[0]
