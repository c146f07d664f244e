"""Which build of the app a process serves: a digest of the app's code, shown by ``GET /health``.

The digest is of the files that make the app's behaviour and that every deployment package
holds (``.funcignore`` ships these): ``function_app.py``, ``host.json``, the requirements, and the
package's Python modules and ``registry.json`` (which holds its models' sha256, so a changed
model changes it too; a registry named by ``EMBEDDINGS_REGISTRY`` elsewhere is not covered). It
is computed from the files as they are on disk, so the folder a deployment was made from gives
the same value (``scripts/smoke_deployed.py --record-build`` when azd packages it, then
``--expect-build local``: ``azure.yaml``'s hooks, which wait until the app answers with the
build just deployed, not an instance still running the previous one).

Standard library only: the smoke script imports it with a bare Python."""

from __future__ import annotations

import hashlib
import logging
import os
import threading
from pathlib import Path

# Not resolve(): where embedding_core/ is a symlink, the folder azd zips (it follows the link) is
# the one holding the link.
ROOT = Path(os.path.abspath(__file__)).parent.parent
PACKAGE = Path(os.path.abspath(__file__)).parent.name
# At the app's root: what the Functions host and the build read.
ROOT_FILES = ("function_app.py", "host.json", "requirements.txt", "requirements.lock")
# In the package: code and the registry (not the models' data files, which the registry pins).
PACKAGE_SUFFIXES = (".py",)
PACKAGE_FILES = ("registry.json",)
LENGTH = 12      # hex digits shown: 48 bits, plenty to tell builds apart

log = logging.getLogger(__name__)
_lock = threading.Lock()
_current: list[str] = []            # [the digest] once computed
_failed = False


def files(root: Path = ROOT) -> list[Path]:
    """The files the digest covers, relative to ``root``, in a fixed order. Directories whose
    name starts with '.' and ``__pycache__`` are skipped (never shipped)."""
    found = [Path(name) for name in ROOT_FILES if (root / name).is_file()]
    package = root / PACKAGE

    def walk(folder: Path, ancestors: frozenset[str]) -> None:
        # Into symlinked directories too, as azd's zip goes (Path.rglob does not), each link
        # on its own (two links to one folder are two copies in the zip); not round a loop.
        with os.scandir(folder) as entries:
            for entry in entries:
                path = Path(entry.path)
                if entry.is_dir():
                    real = os.path.realpath(path)
                    if not (entry.name.startswith(".") or entry.name == "__pycache__"
                            or real in ancestors):
                        walk(path, ancestors | {real})
                elif entry.is_file() and (path.suffix in PACKAGE_SUFFIXES
                                          or (folder == package and entry.name in PACKAGE_FILES)):
                    found.append(path.relative_to(root))
    if package.is_dir():
        walk(package, frozenset({os.path.realpath(package)}))
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
    """This process's build (computed once: a few milliseconds), or None if it could not be
    computed (``/health`` then says ``null`` rather than failing; tried again next time, the
    first failure logged)."""
    global _failed
    with _lock:
        if not _current:
            try:
                _current.append(digest(ROOT))
            except Exception:  # noqa: BLE001 - /health must answer
                if not _failed:
                    _failed = True
                    log.warning("GET /health cannot name the build: reading the app's code "
                                "failed", exc_info=True)
                return None
        return _current[0]
