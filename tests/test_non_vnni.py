"""The default text model on an x86 CPU without VNNI (AVX2 Haswell, emulated by QEMU user mode):
the emulated CPU must run MLAS's saturating 16-bit kernel (a probe shows it) and the model must
still meet its fidelity targets and agree with the native run. About a minute; skipped where
qemu-x86_64 is not installed (Debian/Ubuntu: apt-get install qemu-user)."""

from __future__ import annotations

import importlib.util
import json
import platform
import shutil
import subprocess
import sys

import numpy as np
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


def test_the_non_vnni_check_fails_on_an_emulated_vector_under_the_bound(monkeypatch, capsys):
    """Native within the bounds and within 0.999 of the emulated run, but one emulated vector at
    cosine 0.9925 to the reference: the check must fail (exit 1)."""
    spec = importlib.util.spec_from_file_location("check_non_vnni",
                                                  ROOT / "scripts" / "check_non_vnni.py")
    nv = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(nv)

    def unit(deg):
        return [np.cos(np.radians(deg)), np.sin(np.radians(deg)), 0.0]
    ref = np.array([unit(0)] * 5, np.float32)
    native = np.array([unit(0)] * 4 + [unit(5)], np.float32)        # cos 0.9962
    emulated = np.array([unit(0)] * 4 + [unit(7)], np.float32)      # cos 0.9925; 0.9994 to native
    probe = {"127+127 at rows 0,1 (same pair)": 4000.0, "64+64 at rows 0,1 (pair sum 128)": 0.0,
             "127+127 at rows 1,2 (different pairs)": 0.0}
    monkeypatch.setattr(nv, "texts_and_reference", lambda heldout: (["t"] * 5, ref))
    monkeypatch.setattr(nv, "embed", lambda model, texts: native)
    monkeypatch.setattr(nv, "probe", lambda: probe)
    monkeypatch.setattr(nv.shutil, "which", lambda name: "/usr/bin/qemu-x86_64")

    def run(cmd, **kw):
        np.savez(cmd[cmd.index("--emulated") + 1], vectors=emulated, probe=json.dumps(probe))
        return subprocess.CompletedProcess(cmd, 0, "", "")
    monkeypatch.setattr(nv.subprocess, "run", run)
    assert nv.main([]) == 1
    report = json.loads(capsys.readouterr().out)
    assert report["emulated"]["min"] < 0.995 and report["native"]["min"] >= 0.995
    assert report["native_vs_emulated"]["min_cosine"] >= 0.999
