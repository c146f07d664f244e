"""The README's and the docs' links inside the repository lead somewhere: every relative link names
a file that exists, and every ``#fragment`` a heading of that Markdown file, as GitHub makes its
anchors (lower case, punctuation but ``-`` and ``_`` dropped, spaces to ``-``, ``-1``, ``-2``
for repeats, github-slugger's way: a repeat of ``step`` is ``step-1`` unless that is taken too).
A restructured README or a renamed heading breaks none silently."""

from __future__ import annotations

import re
from functools import cache
from pathlib import Path
from typing import Iterator

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCUMENTS = sorted({ROOT / "README.md", *ROOT.glob("docs/*.md"),
                    *ROOT.glob("embedding_core/models/*/*.md"), *ROOT.glob("tests/data/**/*.md")})
LINK = re.compile(r"\]\(([^)\s]+)\)")
HEADING = re.compile(r" {0,3}#{1,6} (.+?)(?: +#+)? *")      # an ATX heading, its closing #s not
FENCE = re.compile(r" {0,3}(```|~~~)")                         # a fence opens or closes a block


def github_anchor(heading: str) -> str:
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading.strip().lower())   # a link: its text
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def unfenced(text: str) -> Iterator[str]:
    """The lines of ``text`` outside fenced code blocks (```` ``` ```` or ``~~~``, indented up
    to three spaces, as in a list item)."""
    fence = ""
    for line in text.splitlines():
        if m := FENCE.match(line):
            if not fence:
                fence = m.group(1)
                continue
            if m.group(1) == fence:
                fence = ""
                continue
        if not fence:
            yield line


def slugs(headings: list[str]) -> list[str]:
    """GitHub's anchors of a document's headings, in order (github-slugger's counting)."""
    seen: dict[str, int] = {}
    out = []
    for heading in headings:
        base = slug = github_anchor(heading)
        while slug in seen:
            seen[base] += 1
            slug = f"{base}-{seen[base]}"
        seen[slug] = 0
        out.append(slug)
    return out


@cache
def anchors(path: Path) -> frozenset[str]:
    text = path.read_text(encoding="utf-8")
    return frozenset(slugs([m.group(1) for line in unfenced(text)
                            if (m := HEADING.fullmatch(line))]))


def links(doc: Path) -> list[str]:
    return [t for line in unfenced(doc.read_text(encoding="utf-8")) for t in LINK.findall(line)
            if not re.match(r"[a-z][a-z0-9+.-]*:", t)]


def test_anchors_are_githubs():
    assert github_anchor("Use it from…") == "use-it-from"
    assert github_anchor("`GET /health`") == "get-health"
    assert github_anchor("AMD EPYC VM (Zen 5, `avx512_bf16`)") == "amd-epyc-vm-zen-5-avx512_bf16"
    assert github_anchor("Many one-sentence requests at once") == "many-one-sentence-requests-at-once"
    # repeats, as github-slugger (and GitHub) number them
    assert slugs(["Step 1", "Step", "Step"]) == ["step-1", "step", "step-2"]
    assert slugs(["Foo", "Foo", "Foo 1"]) == ["foo", "foo-1", "foo-1-1"]
    assert HEADING.fullmatch("## Closed ##").group(1) == "Closed"
    assert list(unfenced("a\n   ```sh\n# not a heading\n   ```\nb")) == ["a", "b"]


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
