"""The README's and the docs' links inside the repository lead somewhere: every relative link names
a file that exists, and every ``#fragment`` a heading of that Markdown file, as GitHub makes its
anchors (lower case, punctuation but ``-`` and ``_`` dropped, spaces to ``-``, ``-1``, ``-2``
for repeats). A restructured README or a renamed heading breaks none silently."""

from __future__ import annotations

import re
from functools import cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCUMENTS = sorted({ROOT / "README.md", *ROOT.glob("docs/*.md"),
                    *ROOT.glob("embedding_core/models/*/*.md"), *ROOT.glob("tests/data/**/*.md")})
LINK = re.compile(r"\]\(([^)\s]+)\)")
HEADING = re.compile(r"#{1,6} (.+)")


def github_anchor(heading: str) -> str:
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading.strip().lower())   # a link: its text
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


@cache
def anchors(path: Path) -> frozenset[str]:
    found: list[str] = []
    fenced = False
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.startswith("```"):
            fenced = not fenced
        elif not fenced and (m := HEADING.fullmatch(line)):
            anchor = github_anchor(m.group(1))
            repeats = found.count(anchor) + sum(a.startswith(anchor + "-") for a in found
                                                if a[len(anchor) + 1:].isdigit())
            found.append(anchor if not repeats else f"{anchor}-{repeats}")
    return frozenset(found)


def links(doc: Path) -> list[str]:
    fenced, out = False, []
    for line in doc.read_text(encoding="utf-8").splitlines():
        if line.startswith("```"):
            fenced = not fenced
        elif not fenced:
            out += [t for t in LINK.findall(line) if not re.match(r"[a-z][a-z0-9+.-]*:", t)]
    return out


def test_anchors_are_githubs():
    assert github_anchor("Use it from…") == "use-it-from"
    assert github_anchor("`GET /health`") == "get-health"
    assert github_anchor("AMD EPYC VM (Zen 5, `avx512_bf16`)") == "amd-epyc-vm-zen-5-avx512_bf16"
    assert github_anchor("Many one-sentence requests at once") == "many-one-sentence-requests-at-once"


@pytest.mark.parametrize("doc", DOCUMENTS, ids=[str(d.relative_to(ROOT)) for d in DOCUMENTS])
def test_every_link_in_the_repository_resolves(doc):
    broken = []
    for target in links(doc):
        path, _, fragment = target.partition("#")
        file = (doc.parent / path).resolve() if path else doc
        if not file.exists():
            broken.append(f"{target}: no such file")
        elif fragment and file.suffix == ".md" and fragment not in anchors(file):
            broken.append(f"{target}: no such heading in {file.relative_to(ROOT)}")
    assert not broken, broken


def test_the_readme_links_to_its_sections_and_the_docs():
    assert {"use-it-from", "get-health", "errors", "performance"} <= anchors(ROOT / "README.md")
    assert len([t for t in links(ROOT / "README.md") if t.startswith("docs/")]) >= 10
