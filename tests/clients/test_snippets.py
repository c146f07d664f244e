"""The README's framework snippets (docs/snippets/), run against the local host with only the
endpoint and key replaced: their `vectors` are the Azure route's, exactly. tests/test_snippets.py
checks that the README shows exactly these files and runs the others."""

from __future__ import annotations

import warnings

import pytest

from clientkit import SNIPPETS, check_snippet_vectors, run_snippet
from conftest import KEY


@pytest.mark.parametrize("file", sorted(f for f, s in SNIPPETS.items() if s.suite == "clients"))
def test_snippet_runs_against_the_local_host(server, file):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        namespace = run_snippet(file, server.url, KEY)
    check_snippet_vectors(file, namespace, server.url, KEY)


def test_the_readmes_offline_tiktoken_recipe_works_without_a_download(tmp_path):
    """The README's "Offline or behind a firewall" block, run as written from the repository's
    folder in a fresh HOME: LangChain's snippet then embeds through tiktoken without fetching
    anything (any download goes to a closed loopback proxy and fails)."""
    import os
    import re
    import subprocess
    import sys

    from clientkit import README, ROOT

    block = re.search(r"\*\*Offline or behind a firewall\*\*.*?```bash\n(.*?)```",
                      README.read_text(encoding="utf-8"), re.S).group(1)
    env = {k: v for k, v in os.environ.items()
           if k not in ("TIKTOKEN_CACHE_DIR", "NO_PROXY", "no_proxy")}
    env.update(HOME=str(tmp_path), TMPDIR=str(tmp_path), HTTPS_PROXY="http://127.0.0.1:9",
               HTTP_PROXY="http://127.0.0.1:9", https_proxy="http://127.0.0.1:9")
    check = (f"{sys.executable} -c 'import tiktoken; "
             "print(tiktoken.get_encoding(\"cl100k_base\").encode(\"first text\"))'")
    done = subprocess.run(["bash", "-c", block + check], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "[3983, 1495]"
    # and without the recipe the same check cannot get the file: the test can fail
    undone = subprocess.run(["bash", "-c", check], cwd=ROOT, env=env, capture_output=True,
                            text=True, timeout=120)
    assert undone.returncode != 0
