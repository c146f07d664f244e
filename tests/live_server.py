"""The local host (tools/local_host.py) in a subprocess on an ephemeral loopback port.

Imports nothing of the app, so the client suite (tests/clients, its own virtualenv) uses it too,
running the server with the app's interpreter (``python``)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


class LiveServer:
    """tools/local_host.py serving function_app.py on an ephemeral loopback port."""

    def __init__(self, env: dict[str, str], python: str = sys.executable):
        full_env = {k: v for k, v in os.environ.items() if not k.startswith("EMBEDDINGS_")}
        full_env.update(env)
        full_env.setdefault("LOG_LEVEL", "WARNING")
        self.proc = subprocess.Popen(
            [python, "-m", "tools.local_host", "--host", "127.0.0.1", "--port", "0"],
            cwd=ROOT, env=full_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        line = self.proc.stdout.readline()
        if "http://" not in line:
            self.proc.kill()
            raise RuntimeError(f"local host did not start: {line}{self.proc.stdout.read()}")
        self.url = line.strip().rsplit(" ", 1)[-1]
        deadline = time.monotonic() + 30
        while True:
            try:
                urllib.request.urlopen(self.url + "/health", timeout=2).read()
                break
            except OSError:
                if time.monotonic() > deadline:
                    self.stop()
                    raise
                time.sleep(0.1)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
