"""Offline text corpora for calibration and benchmarks: Python standard-library docstrings."""

from __future__ import annotations

import ast
import hashlib
import re
import sysconfig
from pathlib import Path

SKIP_DIRS = {"test", "tests", "idlelib", "site-packages", "lib2to3", "turtledemo", "ensurepip"}


def stdlib_docstrings(min_words: int = 5, max_words: int = 60) -> list[str]:
    """First paragraphs of stdlib module/class/function docstrings, unique, in sha1 order.

    Calibration uses the even positions, benchmarks and quality checks the odd ones.
    """
    root = Path(sysconfig.get_paths()["stdlib"])
    seen: dict[str, str] = {}
    for path in sorted(root.rglob("*.py")):
        if SKIP_DIRS & set(path.relative_to(root).parts):
            continue
        try:
            tree = ast.parse(path.read_text(encoding="utf-8"))
        except (SyntaxError, UnicodeDecodeError, ValueError):
            continue
        for node in ast.walk(tree):
            if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                doc = ast.get_docstring(node)
                if not doc:
                    continue
                para = re.sub(r"\s+", " ", doc.strip().split("\n\n")[0]).strip()
                if min_words <= len(para.split()) <= max_words:
                    seen.setdefault(hashlib.sha1(para.encode()).hexdigest(), para)
    return [seen[k] for k in sorted(seen)]
