"""The default text model on an x86 CPU without VNNI (AVX2 Haswell, emulated by QEMU user mode):
the emulated CPU must run MLAS's saturating 16-bit kernel (a probe shows it) and the model must
still meet its fidelity targets and agree with the native run. About a minute; skipped where
qemu-x86_64 is not installed (Debian/Ubuntu: apt-get install qemu-user)."""

from __future__ import annotations

import json
import platform
import shutil
import subprocess
import sys

import pytest

from conftest import ROOT

pytestmark = pytest.mark.skipif(
    shutil.which("qemu-x86_64") is None or platform.machine() not in ("x86_64", "AMD64"),
    reason="needs qemu-x86_64 (apt-get install qemu-user) on an x86-64 host")


def test_default_model_is_correct_without_vnni():
    run = subprocess.run([sys.executable, str(ROOT / "scripts" / "check_non_vnni.py")],
                         capture_output=True, text=True, timeout=900)
    report = json.loads(run.stdout)
    assert report["probe_emulated"]["127+127 at rows 0,1 (same pair)"] > 1000   # it does saturate
    assert report["probe_emulated"]["64+64 at rows 0,1 (pair sum 128)"] == 0
    assert report["emulated"]["min"] >= 0.995 and report["emulated"]["median"] >= 0.999, report
    assert report["native_vs_emulated"]["min_cosine"] >= 0.999, report
    assert run.returncode == 0, run.stderr[-2000:]
