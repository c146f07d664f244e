"""tools/venv.sh, the Makefile's virtualenv step: an interpreter the pinned packages do not support
is refused with what to do (before: pip's "Could not find a version that satisfies the
requirement azure-functions==1.26.0" on Python 3.13), and a .venv whose Python no longer runs
or is not the one the user asked for is made anew (before: `python -m venv` over it kept the old
interpreter, and the user had to find `rm -rf .venv`)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.skipif(shutil.which("bash") is None, reason="bash is not installed")
ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "tools" / "venv.sh"
HERE = "%d.%d" % sys.version_info[:2]
OTHER = "3.12" if HERE != "3.12" else "3.13"


def venv_sh(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["bash", str(SCRIPT), *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=120)


def fake_python(tmp_path: Path, version: str) -> str:
    """An executable that answers the version question as that Python would, and nothing else."""
    path = tmp_path / f"python{version}"
    path.write_text(f"#!/bin/sh\necho {version}\n")
    path.chmod(0o755)
    return str(path)


def make_venv(path: Path) -> Path:
    """A virtualenv of this Python; its pip is only the package's marker (pip is not needed)."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(path)], check=True,
                   timeout=120)
    pip = path / "lib" / f"python{HERE}" / "site-packages" / "pip"
    pip.mkdir(parents=True)
    (pip / "__init__.py").touch()
    (path / "mine").write_text("kept")          # gone if the venv is made anew
    return path


def clean_env() -> dict[str, str]:
    """The environment without a PYTHON of the user's (exported for node-gyp, say)."""
    return {k: v for k, v in os.environ.items() if k not in ("PYTHON", "MAKEFLAGS", "MAKELEVEL")}


@pytest.mark.parametrize("version", ["3.10", "3.9", "3.15", "2.7"])
def test_an_unsupported_python_is_refused_with_what_to_do(tmp_path, version):
    venv = tmp_path / "venv"
    done = venv_sh(fake_python(tmp_path, version), str(venv), "file")
    assert done.returncode == 1
    assert f"is Python {version}; this project needs Python 3.11, 3.12, 3.13, 3.14" in done.stderr
    assert "make serve PYTHON=python3.12" in done.stderr
    assert not venv.exists()


def test_a_python_that_does_not_run_is_refused(tmp_path):
    venv = tmp_path / "venv"
    done = venv_sh(str(tmp_path / "no-such-python"), str(venv), "command line")
    assert done.returncode == 1 and "cannot run" in done.stderr, done.stderr
    assert "Install one of Python 3.11, 3.12, 3.13, 3.14 and pass it" in done.stderr
    assert not venv.exists()


def test_a_venv_whose_python_is_gone_is_made_anew(tmp_path):
    venv = make_venv(tmp_path / "venv")
    python = venv / "bin" / "python"
    python.unlink()
    python.symlink_to(tmp_path / "removed-python")             # as after an upgrade
    assert venv_sh("--stale", sys.executable, str(venv), "file").stdout.strip() == "stale"
    done = venv_sh(sys.executable, str(venv), "file")
    assert done.returncode == 0, done.stderr
    assert "no longer runs" in done.stdout and "making" in done.stdout
    assert not (venv / "mine").exists()
    ran = subprocess.run([str(python), "-c", "import sys; print(sys.prefix)"], capture_output=True,
                         text=True, timeout=60)
    assert ran.stdout.strip() == str(venv)


def test_a_working_venv_is_kept_unless_the_user_asks_for_another_python(tmp_path):
    venv = make_venv(tmp_path / "venv")
    for python, origin in [("python3", "file"), (fake_python(tmp_path, OTHER), "file"),
                           (fake_python(tmp_path, HERE), "command line")]:
        assert venv_sh("--stale", python, str(venv), origin).stdout == ""
        done = venv_sh(python, str(venv), origin)
        assert done.returncode == 0 and done.stdout == "", done
        assert (venv / "mine").exists()


def test_a_directory_that_is_not_a_venv_is_left_alone(tmp_path):
    folder = tmp_path / "venv"
    folder.mkdir()
    (folder / "notes.txt").write_text("mine")
    done = venv_sh(sys.executable, str(folder), "file")
    assert done.returncode == 1 and "is not a virtualenv" in done.stderr
    assert (folder / "notes.txt").read_text() == "mine"
    assert venv_sh("--stale", sys.executable, str(folder), "file").stdout == ""


@pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")
def test_make_remakes_a_venv_whose_python_is_gone_even_with_its_stamps(tmp_path):
    """`make -n serve` (printed, nothing run) on a venv whose stamps are up to date: nothing to
    install while its Python runs, the venv step once it does not."""
    venv = make_venv(tmp_path / "venv")
    for stamp in (".serve-installed", ".installed"):       # newer than the requirements
        (venv / stamp).touch()

    def plan() -> list[str]:
        out = subprocess.run(["make", "-n", "serve", f"VENV={venv}"], cwd=ROOT, env=clean_env(),
                             capture_output=True, text=True, timeout=60, check=True).stdout
        return [line for line in out.splitlines() if "venv.sh" in line or "pip install" in line]

    assert plan() == []
    python = venv / "bin" / "python"
    python.unlink()
    python.symlink_to(tmp_path / "removed-python")
    planned = plan()
    assert planned and "tools/venv.sh" in planned[0], planned
    assert planned[-1].endswith("-r requirements-serve.txt"), planned


def test_a_venv_of_an_unsupported_python_is_made_anew(tmp_path):
    """As the old Makefile made it with a python3 of 3.10 before pip failed."""
    venv = make_venv(tmp_path / "venv")
    python = venv / "bin" / "python"
    python.unlink()
    python.write_text("#!/bin/sh\necho 3.10\n")
    python.chmod(0o755)
    (venv / "pyvenv.cfg").write_text("home = /usr/bin\nversion = 3.10.12\n")
    assert venv_sh("--stale", "python3", str(venv), "file").stdout.strip() == "stale"
    done = venv_sh(sys.executable, str(venv), "file")
    assert done.returncode == 0, done.stderr
    assert "has Python 3.10, which the pinned packages do not support" in done.stdout


def test_a_venv_whose_python_was_upgraded_in_place_is_made_anew(tmp_path):
    """/usr/bin/python3 is 3.13 after a dist-upgrade: the venv's python runs, as 3.13, with its
    packages in lib/python3.11 (review h_diff14 F1)."""
    venv = make_venv(tmp_path / "venv")
    python = venv / "bin" / "python"
    python.unlink()
    python.symlink_to(fake_python(tmp_path, OTHER))
    assert venv_sh("--stale", "python3", str(venv), "file").stdout.strip() == "stale"
    done = venv_sh(sys.executable, str(venv), "file")
    assert done.returncode == 0, done.stderr
    assert f"made with Python {HERE} and its python is now {OTHER}" in done.stdout


def test_a_venv_without_pip_is_made_anew_with_it(tmp_path):
    """An interrupted `python -m venv`, or a venv another tool made (review h_diff14 F3)."""
    venv = make_venv(tmp_path / "venv")
    shutil.rmtree(venv / "lib" / f"python{HERE}" / "site-packages" / "pip")
    assert venv_sh("--stale", sys.executable, str(venv), "file").stdout.strip() == "stale"
    done = venv_sh(sys.executable, str(venv), "file")
    assert done.returncode == 0 and "has no pip" in done.stdout, done
    assert subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "--version"],
                          capture_output=True, timeout=60).returncode == 0


@pytest.mark.parametrize("origin", ["command line", "environment", "environment override",
                                    "override"])
def test_every_way_of_choosing_a_python_counts(tmp_path, origin):
    venv = make_venv(tmp_path / "venv")
    assert venv_sh("--stale", fake_python(tmp_path, OTHER), str(venv),
                   origin).stdout.strip() == "stale"


def test_an_unsupported_python_from_the_environment_keeps_a_good_venv(tmp_path):
    """A PYTHON exported for other tools is not a reason to drop a working .venv (h_diff14 F2);
    given on make's command line it is refused, and the venv is left as it was."""
    venv = make_venv(tmp_path / "venv")
    old = fake_python(tmp_path, "3.10")
    assert venv_sh("--stale", old, str(venv), "environment").stdout == ""
    done = venv_sh(old, str(venv), "command line")
    assert done.returncode == 1 and "is Python 3.10" in done.stderr
    assert "anew" not in done.stdout and (venv / "mine").exists()


def test_an_empty_directory_or_a_symlink_is_made_into_the_venv(tmp_path):
    """An empty .venv (a devcontainer's volume) is used in place; a symlink to a broken venv is
    replaced by a venv of its own, and what it pointed to is left alone."""
    empty = tmp_path / "empty"
    empty.mkdir()
    done = venv_sh(sys.executable, str(empty), "file")
    assert done.returncode == 0 and (empty / "pyvenv.cfg").is_file(), done
    target = make_venv(tmp_path / "elsewhere")
    (target / "bin" / "python").unlink()
    link = tmp_path / "link"
    link.symlink_to(target)
    assert venv_sh(sys.executable, str(link), "file").returncode == 0
    assert not link.is_symlink() and (link / "pyvenv.cfg").is_file()
    assert (target / "mine").exists()


@pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")
def test_make_passes_its_choice_and_checks_both_venvs(tmp_path):
    venv, clients = make_venv(tmp_path / "venv"), make_venv(tmp_path / "clients")
    for stamp in (venv / ".serve-installed", venv / ".installed", clients / ".installed"):
        stamp.touch()

    def plan(*args: str) -> list[str]:
        out = subprocess.run(["make", "-n", "install", "clients-venv", f"VENV={venv}",
                              f"CLIENTS_VENV={clients}", *args], cwd=ROOT, env=clean_env(),
                             capture_output=True, text=True, timeout=60, check=True).stdout
        return [line for line in out.splitlines() if "venv.sh" in line]

    assert plan() == []
    assert len(plan(f"PYTHON={fake_python(tmp_path, OTHER)}")) == 2


def recording_python(folder: Path) -> tuple[str, Path]:
    """An executable that answers the version question as this Python and records every
    command line it is given, one per line."""
    folder.mkdir(parents=True, exist_ok=True)
    log = folder / "calls.log"
    path = folder / "python"
    path.write_text(f'#!/bin/sh\necho "$*" >> "{log}"\n'
                    f'case " $* " in *" -c "*) echo {HERE} ;; esac\n')
    path.chmod(0o755)
    return str(path), log


def test_a_python_given_with_arguments_makes_the_venv_with_them(tmp_path):
    """PYTHON="python3 -X dev" worked with the Makefile's old `$(PYTHON) -m venv` (h_diff14 F5)."""
    python, log = recording_python(tmp_path / "bin")
    venv = tmp_path / "venv"
    done = venv_sh(f"{python} -X dev", str(venv), "command line")
    assert done.returncode == 0, done.stderr
    calls = log.read_text().splitlines()
    assert calls[-1] == f"-X dev -m venv --clear {venv}", calls
    assert all(call.startswith("-X dev ") for call in calls), calls


def test_a_python_whose_path_has_spaces_is_one_command(tmp_path):
    python, log = recording_python(tmp_path / "my tools" / "bin")
    venv = tmp_path / "venv"
    done = venv_sh(python, str(venv), "command line")
    assert done.returncode == 0, done.stderr
    assert log.read_text().splitlines()[-1] == f"-m venv --clear {venv}"
