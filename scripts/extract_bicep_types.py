#!/usr/bin/env python3
"""Extract, from Azure's published Bicep type definitions, the schemas of the resource
types that infra/ uses, into tests/data/bicep_types.json.

The source is github.com/Azure/bicep-types-az (generated/<rp>/<namespace>/<api-version>/
types.json), the type data the Bicep compiler itself uses. tests/test_infra.py checks every
resource in infra/ against the extracted schemas offline: the API version exists, every
property written exists there and is writable, and literal values fit enums and bounds.

    git clone --filter=blob:none https://github.com/Azure/bicep-types-az /tmp/bicep-types-az
    python3 scripts/extract_bicep_types.py --repo /tmp/bicep-types-az

--repo may be a checkout or a bare/mirror git directory (files are read with git show at
--commit, default HEAD). Run it again whenever an API version in infra/ changes. Only the
standard library and the git CLI are needed.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

ROOT = Path(__file__).resolve().parents[1]
INFRA = ROOT / "infra"
OUT = ROOT / "tests" / "data" / "bicep_types.json"

# bicep-types TypePropertyFlags: Required 1, ReadOnly 2, WriteOnly 4, DeployTimeConstant 8.
READ_ONLY = 2
# Plain primitive types are shared under these keys instead of one copy per occurrence.
PRIMITIVES = {"StringType": "string", "BooleanType": "bool", "IntegerType": "int", "AnyType": "any"}

RESOURCE_RE = re.compile(r"^\s*resource\s+\w+\s+'([^'@]+)@([^']+)'", re.MULTILINE)


def git(repo: Path, *args: str) -> str:
    return subprocess.run(
        ["git", "-C", str(repo), *args], check=True, capture_output=True, text=True
    ).stdout


def used_resource_types(infra: Path) -> List[str]:
    found = set()
    for path in sorted(infra.rglob("*.bicep")):
        for rtype, version in RESOURCE_RE.findall(path.read_text()):
            found.add(f"{rtype}@{version}")
    return sorted(found)


class Extractor:
    def __init__(self, repo: Path, commit: str) -> None:
        self.repo = repo
        self.commit = commit
        self.files = [
            line
            for line in git(repo, "ls-tree", "-r", "--name-only", commit, "generated").splitlines()
            if line.endswith("/types.json")
        ]
        self.loaded: Dict[str, List[Dict[str, Any]]] = {}
        self.types: Dict[str, Dict[str, Any]] = {}

    def load(self, path: str) -> List[Dict[str, Any]]:
        if path not in self.loaded:
            self.loaded[path] = json.loads(git(self.repo, "show", f"{self.commit}:{path}"))
        return self.loaded[path]

    def find_resource(self, full_name: str) -> Tuple[str, int]:
        rtype, version = full_name.split("@")
        namespace = rtype.split("/")[0].lower()
        candidates = [f for f in self.files if f"/{namespace}/{version}/" in f.lower()]
        for path in candidates:
            for index, entry in enumerate(self.load(path)):
                if entry.get("$type") == "ResourceType" and entry.get("name", "").lower() == full_name.lower():
                    return path, index
        raise SystemExit(f"{full_name}: not in bicep-types-az {self.commit} ({len(candidates)} candidate files)")

    @staticmethod
    def ref_index(ref: Dict[str, Any]) -> int:
        return int(ref["$ref"].rsplit("/", 1)[1])

    def add(self, path: str, index: int) -> str:
        """Simplify type `index` of `path` (and all it refers to); return its key."""
        entry = self.load(path)[index]
        kind = entry["$type"]
        if kind in PRIMITIVES and set(entry) == {"$type"}:
            key = PRIMITIVES[kind]
            self.types[key] = {"kind": key}
            return key
        key = f"{path}#{index}"
        if key in self.types:
            return key
        self.types[key] = {}  # reserve: types are recursive

        def sub(ref: Dict[str, Any]) -> str:
            return self.add(path, self.ref_index(ref))

        def props(properties: Dict[str, Any]) -> Dict[str, Any]:
            out = {}
            for name, p in properties.items():
                flags = p.get("flags", 0)
                # A read-only property may not be written at all: its type is not needed.
                out[name] = {"type": "readonly" if flags & READ_ONLY else sub(p["type"]), "flags": flags}
            return out

        if kind == "ResourceType":
            out: Dict[str, Any] = {"kind": "resource", "name": entry["name"], "body": sub(entry["body"])}
        elif kind == "ObjectType":
            out = {"kind": "object", "name": entry.get("name"), "properties": props(entry.get("properties", {}))}
            if "additionalProperties" in entry:
                out["additional"] = sub(entry["additionalProperties"])
        elif kind == "DiscriminatedObjectType":
            out = {
                "kind": "discriminated",
                "name": entry.get("name"),
                "discriminator": entry["discriminator"],
                "base": props(entry.get("baseProperties", {})),
                "elements": {value: sub(ref) for value, ref in entry["elements"].items()},
            }
        elif kind == "ArrayType":
            out = {"kind": "array", "item": sub(entry["itemType"])}
            for bound in ("minLength", "maxLength"):
                if bound in entry:
                    out[bound] = entry[bound]
        elif kind == "UnionType":
            out = {"kind": "union", "elements": [sub(ref) for ref in entry["elements"]]}
        elif kind == "StringLiteralType":
            out = {"kind": "literal", "value": entry["value"]}
        elif kind == "StringType":
            out = {"kind": "string"}
            for bound in ("minLength", "maxLength", "pattern"):
                if bound in entry:
                    out[bound] = entry[bound]
        elif kind == "IntegerType":
            out = {"kind": "int"}
            for bound in ("minValue", "maxValue"):
                if bound in entry:
                    out[bound] = entry[bound]
        elif kind == "BooleanType":
            out = {"kind": "bool"}
        elif kind == "AnyType":
            out = {"kind": "any"}
        else:  # ResourceFunctionType and anything new: not needed for resource bodies
            out = {"kind": "any", "note": kind}
        self.types[key] = out
        return key


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repo", type=Path, required=True, help="bicep-types-az checkout or git dir")
    parser.add_argument("--commit", default="HEAD")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args(argv)

    commit = git(args.repo, "rev-parse", args.commit).strip()
    date = git(args.repo, "show", "-s", "--format=%cs", commit).strip()
    extractor = Extractor(args.repo, commit)
    resources = {}
    for full_name in used_resource_types(INFRA):
        path, index = extractor.find_resource(full_name)
        resources[full_name] = extractor.add(path, index)
    document = {
        "source": {"repository": "Azure/bicep-types-az", "commit": commit, "date": date},
        "generated_by": "scripts/extract_bicep_types.py",
        "resources": resources,
        "types": dict(sorted(extractor.types.items())),
    }
    # One type per line: small, and diffs show what a new API version changed.
    lines = ["{"]
    for field in ("source", "generated_by", "resources"):
        body = json.dumps(document[field], indent=1).replace("\n", "\n ")
        lines.append(f" {json.dumps(field)}: {body},")
    lines.append(' "types": {')
    items = list(document["types"].items())
    for i, (key, value) in enumerate(items):
        comma = "," if i < len(items) - 1 else ""
        lines.append(f"  {json.dumps(key)}: {json.dumps(value, separators=(',', ':'))}{comma}")
    lines.append(" }")
    lines.append("}")
    args.out.write_text("\n".join(lines) + "\n")
    json.loads(args.out.read_text())  # still one JSON document
    print(f"{args.out.relative_to(ROOT)}: {len(resources)} resource types, {len(extractor.types)} types, "
          f"bicep-types-az {commit[:12]} ({date})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
