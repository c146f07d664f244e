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
