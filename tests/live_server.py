"""The local host (tools/local_host.py) in a subprocess on an ephemeral loopback port.

Imports nothing of the app, so the client suite (tests/clients, its own virtualenv) uses it too,
running the server with the app's interpreter (``python``)."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


class LiveServer:
    """tools/local_host.py serving function_app.py (or the one in ``app_dir``) on an ephemeral
    loopback port."""

    def __init__(self, env: dict[str, str], app_dir: Path | None = None,
                 python: str = sys.executable, command: list[str] | None = None):
        """``command``: what starts it instead (``make serve PORT=0``), which prints its
        "Serving" line, maybe after others."""
        full_env = {k: v for k, v in os.environ.items()
                    if not k.startswith(("EMBEDDINGS_", "LOCAL_HOST_"))}
        full_env.update(env)
        full_env.setdefault("LOG_LEVEL", "WARNING")
        app = ["--app-dir", str(app_dir)] if app_dir is not None else []
        self.proc = subprocess.Popen(
            command or [python, "-m", "tools.local_host", "--host", "127.0.0.1", "--port", "0",
                        *app],
            cwd=ROOT, env=full_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        before = []
        while "http://" not in (line := self.proc.stdout.readline()) and line \
                and command and len(before) < 1000:
            before.append(line)
        if "http://" not in line:
            self.proc.kill()
            raise RuntimeError(f"local host did not start: {''.join(before)}{line}"
                               f"{self.proc.stdout.read()}")
        self.url = line.strip().rsplit(" ", 1)[-1]
        # Drain the server's output all along: a pipe nobody reads fills at 64 KB and then
        # stalls the server on its next log line.
        self._lines: list[str] = []
        self._reader = threading.Thread(target=self._drain, daemon=True)
        self._reader.start()
        deadline = time.monotonic() + 30
        while True:
            try:
                urllib.request.urlopen(self.url + "/health", timeout=2).read()
                break
            except urllib.error.HTTPError:  # an answer: the server is up (an app without /health)
                break
            except OSError:
                if time.monotonic() > deadline:
                    self.stop()
                    raise
                time.sleep(0.1)

    def _drain(self) -> None:
        for out_line in self.proc.stdout:
            self._lines.append(out_line)

    def output(self) -> str:
        """Everything the server printed after its "Serving" line (complete once stopped)."""
        if self.proc.poll() is not None:
            self._reader.join(10)
        return "".join(self._lines)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self._reader.join(10)
