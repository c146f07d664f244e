"""Write requirements.lock: every package the Function App installs, pinned (one-time job; run it
after changing requirements.txt, then `make install` and `make test`).

requirements.txt names the app's direct dependencies and reads requirements.lock as pip
constraints (``-c``), so Azure's remote build (Oryx: ``pip install -r requirements.txt``), `make
serve` and CI install the same versions of the ~75 packages they pull in, instead of whatever is
newest on the day of each deployment. The lock is resolved here, not by hand: each Python given
gets a fresh virtualenv with requirements.txt alone (without the lock) and its ``pip freeze``;
a package pinned differently (or only present) on some of them gets ``python_version`` markers:
each Python's pins hold from its version up to the next one given (the lowest's below it too,
the highest's above it too). Run it with Python 3.11 (the lowest this project supports, and the
machine's in CI), and give 3.12 (what infra/ deploys) and a 3.13 or newer (the other branch of
requirements.txt: azure-functions 2.x, e.g. the one .ci/python.sh builds): a lock resolved on
3.11 alone would pin azure-functions 1.x for every Python and make installs on 3.13+ impossible.

No hashes: with a hash on any line pip checks every requirement of the install in hash mode, which
requirements-serve.txt's and requirements-dev.txt's unhashed additions would fail; and a pinned
version's files cannot be replaced on PyPI. tests/test_infra.py checks that every package
requirements.txt installs is pinned here at the installed version.

Usage: python3.11 scripts/lock_requirements.py PYTHON3.12 PYTHON3.13   (e.g. "$(bash .ci/python.sh)")
"""

from __future__ import annotations

import re
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SPLIT = (3, 13)     # requirements.txt's own marker: azure-functions 1.x below, 2.x from here
AZURE = (3, 12)     # infra/'s default runtime version (pythonVersion)


def freeze(python: str) -> tuple[tuple[int, int], dict[str, str]]:
    with tempfile.TemporaryDirectory() as tmp:
        venv = Path(tmp) / "venv"
        subprocess.run([python, "-m", "venv", str(venv)], check=True)
        pip = [str(venv / "bin" / "python"), "-m", "pip"]
        reqs = Path(tmp) / "requirements.txt"   # without the lock: resolve afresh
        reqs.write_text("".join(line + "\n" for line in
                                (ROOT / "requirements.txt").read_text().splitlines()
                                if not line.startswith("-c ")))
        subprocess.run(pip + ["install", "-q", "--upgrade", "pip"], check=True)
        subprocess.run(pip + ["install", "-q", "-r", str(reqs)], check=True)
        out = subprocess.run(pip + ["freeze", "--all", "--exclude", "pip", "--exclude",
                                    "setuptools", "--exclude", "wheel"],
                             check=True, capture_output=True, text=True).stdout
        version = subprocess.run([str(venv / "bin" / "python"), "-c",
                                  "import sys; print(*sys.version_info[:2])"],
                                 check=True, capture_output=True, text=True).stdout.split()
    pins = {}
    for line in out.splitlines():
        name, _, pinned = line.partition("==")
        if not pinned:
            raise SystemExit(f"not a pin in pip freeze: {line!r}")
        pins[name] = pinned
    return (int(version[0]), int(version[1])), pins


def lock_lines(frozen: dict[tuple[int, int], dict[str, str]]) -> list[str]:
    """One pin per package and version range: each Python's pins hold from its version up to the
    next one's (the lowest's below it too, the highest's above it too); adjacent versions with
    the same pin share one line, and a package pinned alike everywhere gets no marker."""
    versions = sorted(frozen)
    names = set().union(*(pins.keys() for pins in frozen.values()))
    lines = []
    for name in sorted(names, key=lambda n: re.sub(r"[-_.]+", "-", n).lower()):
        pinned = [frozen[v].get(name) for v in versions]
        if len(set(pinned)) == 1:
            lines.append(f"{name}=={pinned[0]}")
            continue
        i = 0
        while i < len(versions):
            j = i
            while j + 1 < len(versions) and pinned[j + 1] == pinned[i]:
                j += 1
            if pinned[i] is not None:
                bounds = []
                if i > 0:
                    bounds.append('python_version >= "%d.%d"' % versions[i])
                if j + 1 < len(versions):
                    bounds.append('python_version < "%d.%d"' % versions[j + 1])
                lines.append(f"{name}=={pinned[i]}; " + " and ".join(bounds))
            i = j + 1
    return lines


def main() -> None:
    if len(sys.argv) < 3:
        raise SystemExit(__doc__.rsplit("Usage: ", 1)[1])
    if sys.version_info[:2] != (3, 11):
        raise SystemExit(f"run this with Python 3.11 (the lowest supported), not "
                         f"{'.'.join(map(str, sys.version_info[:2]))}")
    frozen = dict(freeze(python) for python in [sys.executable, *sys.argv[1:]])
    versions = sorted(frozen)
    if len(versions) != len(sys.argv):
        raise SystemExit("give each Python version once")
    if AZURE not in frozen:
        raise SystemExit(f"give Python {AZURE[0]}.{AZURE[1]} too (what infra/ deploys)")
    if versions[-1] < SPLIT:
        raise SystemExit(f"give a Python {SPLIT[0]}.{SPLIT[1]} or newer too")
    lines = lock_lines(frozen)
    shown = ", ".join(f"{v[0]}.{v[1]}" for v in versions)
    header = [
        "# Every package the Function App installs, pinned: requirements.txt reads this file as",
        "# constraints. Written by scripts/lock_requirements.py (pip freeze of requirements.txt",
        f"# alone on Python {shown}); do not edit by hand.",
    ]
    (ROOT / "requirements.lock").write_text("\n".join(header + lines) + "\n")
    print(f"requirements.lock: {len(lines)} pins")


if __name__ == "__main__":
    main()
