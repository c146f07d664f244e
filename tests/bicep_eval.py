"""Evaluate Bicep variables offline, for the small set of ARM template functions infra/ uses.

There is no Bicep CLI or ARM here, so logic that decides a deployed value (e.g. which API
keys the Key Vault secret ends up with) is evaluated from the pycep-parser tree with the
documented semantics of each ARM function:

- contains(string, string): ordinal, case-sensitive substring test; contains(object, key):
  whether the object has the key, case-insensitively (ARM object functions reference).
- startsWith / endsWith: case-insensitive (ARM string functions reference).
- split, join, trim, toLower, replace, skip (strings), take, substring, length, empty, first:
  as documented.
- guid(a, b, ...): a version-5 (name-based, SHA-1) UUID in the namespace
  11fb06fb-712d-4ddd-98c7-e71bbd588830 over the arguments joined with '-'; deterministic,
  lower-case, with hyphens.
- newGuid(): a random version-4 GUID (only valid as a parameter default).
- union(object, ...): the objects' properties, a later object's winning; nested objects are
  merged recursively, as ARM does.
- resourceGroup(): the object given as ``resource_group`` (e.g. {"tags": {...}} or {}), whose
  properties are read with `.name`; a property it lacks raises, as ARM's evaluation fails.
- `cond ? a : b`, `||`, `&&`, `!`, comparisons, string interpolation (also in object keys),
  variable for-loops (also with an index, `[for (x, i) in ...]`), `array[i]`; a resource's
  `if (...)` condition (``condition``).

Anything else raises NotSupported, so a template change that this module cannot model
makes the tests that use it fail instead of passing by accident.
"""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

from pycep import BicepParser

ARM_GUID_NAMESPACE = uuid.UUID("11fb06fb-712d-4ddd-98c7-e71bbd588830")


class NotSupported(Exception):
    pass


def arm_guid(*parts: str) -> str:
    return str(uuid.uuid5(ARM_GUID_NAMESPACE, "-".join(parts)))


def _split_interpolation(text: str) -> List[tuple]:
    """'a${x}b' -> [('lit', 'a'), ('expr', 'x'), ('lit', 'b')]; braces and quotes nest."""
    parts: List[tuple] = []
    i = 0
    literal = ""
    while i < len(text):
        if text.startswith("${", i):
            if literal:
                parts.append(("lit", literal))
                literal = ""
            depth, j, quote = 1, i + 2, False
            while depth:
                if j >= len(text):
                    raise NotSupported(f"unterminated interpolation in {text!r}")
                ch = text[j]
                if ch == "'":
                    quote = not quote
                elif not quote and ch == "{":
                    depth += 1
                elif not quote and ch == "}":
                    depth -= 1
                j += 1
            parts.append(("expr", text[i + 2 : j - 1]))
            i = j
        else:
            literal += text[i]
            i += 1
    if literal:
        parts.append(("lit", literal))
    return parts


_EXPR_CACHE: Dict[str, Any] = {}


def _parse_expression(text: str) -> Any:
    if text not in _EXPR_CACHE:
        tree = BicepParser().parse(text=f"var x = {text}\n")
        _EXPR_CACHE[text] = tree["variables"]["x"]["value"]
    return _EXPR_CACHE[text]


def _args(node: Dict[str, Any]) -> List[Any]:
    return [v for v in (node.get("parameters") or {}).values() if v is not None]


class Evaluator:
    """Variables of one parsed Bicep file, evaluated for given parameter values."""

    def __init__(self, tree: Dict[str, Any], params: Dict[str, Any],
                 resource_group: Optional[Dict[str, Any]] = None) -> None:
        self.resource_group = resource_group
        self.resources = tree.get("resources", {})
        self.outputs = tree.get("outputs", {})
        self.variables = {name: spec["value"] for name, spec in tree.get("variables", {}).items()}
        self.declared = tree.get("parameters", {})
        unknown = set(params) - set(self.declared)
        if unknown:
            raise NotSupported(f"unknown parameters {unknown}")
        self.params = dict(params)
        for name, spec in self.declared.items():
            if name not in self.params:
                if spec.get("default") is None:
                    raise NotSupported(f"parameter {name} has no value and no default")
                self.params[name] = self.eval(spec["default"], {})
        self.cache: Dict[str, Any] = {}

    @classmethod
    def from_file(cls, path: Path, params: Dict[str, Any]) -> "Evaluator":
        return cls(BicepParser().parse(file_path=path), params)

    def variable(self, name: str) -> Any:
        if name not in self.cache:
            self.cache[name] = self.eval(self.variables[name], {})
        return self.cache[name]

    def condition(self, resource: str) -> bool:
        """Whether the resource (by symbolic name) is deployed: its `if (...)`, else True."""
        config = self.resources[resource]["config"]
        if "condition" not in config:
            return True
        return bool(self.eval(config["condition"], {}))

    def output(self, name: str) -> Any:
        return self.eval(self.outputs[name]["value"], {})

    def eval(self, node: Any, scope: Dict[str, Any]) -> Any:
        if isinstance(node, bool) or isinstance(node, (int, float)) or node is None:
            return node
        if isinstance(node, str):
            if node in scope:
                return scope[node]
            if node in self.params:
                return self.params[node]
            if node in self.variables:
                return self.variable(node)
            if "${" in node:
                out = ""
                for kind, piece in _split_interpolation(node):
                    out += piece if kind == "lit" else _stringify(self.eval(_parse_expression(piece), scope))
                return out
            return node
        if isinstance(node, list):
            return [self.eval(item, scope) for item in node]
        if isinstance(node, dict):
            if "loop_type" in node:
                detail = node["loop_type"]["detail"]
                kind = node["loop_type"]["type"]
                if node.get("condition") is not None or kind not in ("array", "array_index"):
                    raise NotSupported("only array loops, without a condition")
                items = self.eval(detail["array_name"], scope)
                index = detail.get("index_name") if kind == "array_index" else None
                return [self.eval(node["config"], {**scope, detail["item_name"]: item,
                                                   **({index: i} if index else {})})
                        for i, item in enumerate(items)]
            if set(node) == {"function"}:
                return self.call(node["function"], scope)
            if set(node) == {"operator"}:
                return self.operate(node["operator"], scope)
            return {self._key(k, scope): self.eval(v, scope) for k, v in node.items()}
        raise NotSupported(repr(node))

    def _key(self, raw: str, scope: Dict[str, Any]) -> str:
        key = raw.strip("'")
        if "${" not in key:
            return key
        return "".join(piece if kind == "lit" else _stringify(self.eval(_parse_expression(piece), scope))
                       for kind, piece in _split_interpolation(key))

    def call(self, fn: Dict[str, Any], scope: Dict[str, Any]) -> Any:
        name = fn["type"]
        if name == "new_guid":
            return str(uuid.uuid4())
        if name == "resource_group":
            if self.resource_group is None or any(_args(fn)):
                raise NotSupported("resourceGroup() without a resource_group, or of another group")
            return self.resource_group
        args = [self.eval(a, scope) for a in _args(fn)]
        impl: Optional[Callable[..., Any]] = FUNCTIONS.get(name)
        if impl is None:
            raise NotSupported(f"function {name}")
        return impl(*args)

    def operate(self, op: Dict[str, Any], scope: Dict[str, Any]) -> Any:
        kind = op["type"]
        operands = op.get("operands", {})
        if kind == "conditional":
            # ARM evaluates only the branch the condition selects.
            branch = "true_value" if self.eval(operands["condition"], scope) else "false_value"
            return self.eval(operands[branch], scope)
        if kind == "property_accessor":
            target, prop = self.eval(operands["operand_1"], scope), operands["operand_2"]
            if not isinstance(prop, str) or not isinstance(target, dict):
                raise NotSupported(f"property access {op!r}")
            if prop not in target:
                raise KeyError(f"ARM would fail: the object has no property {prop!r}")
            return target[prop]
        if kind == "index_accessor":
            target, index = self.eval(operands["operand_1"], scope), self.eval(operands["operand_2"], scope)
            if not isinstance(target, list) or not isinstance(index, int):
                raise NotSupported(f"index access {op!r}")
            if not 0 <= index < len(target):
                raise IndexError(f"ARM would fail: index {index} of an array of {len(target)}")
            return target[index]
        values = [self.eval(v, scope) for v in operands.values()]
        impl = OPERATORS.get(kind)
        if impl is None:
            raise NotSupported(f"operator {kind}")
        return impl(*values)


def _stringify(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float, str)):
        return str(value)
    raise NotSupported(f"interpolating {value!r}")


def _contains(container: Any, item: Any) -> bool:
    if isinstance(container, str):
        return str(item) in container
    if isinstance(container, dict):
        return str(item).lower() in {k.lower() for k in container}
    return item in container


def _union(*items: Any) -> Any:
    if not all(isinstance(i, dict) for i in items):
        raise NotSupported("union of anything but objects")
    out: Dict[str, Any] = {}
    for item in items:
        for key, value in item.items():
            both = isinstance(out.get(key), dict) and isinstance(value, dict)
            out[key] = _union(out[key], value) if both else value
    return out


def _skip(value: Any, count: int) -> Any:
    return value[max(count, 0):]


FUNCTIONS: Dict[str, Callable[..., Any]] = {
    "contains": _contains,
    "length": len,
    "empty": lambda v: v in ("", [], {}, None),
    "trim": lambda s: s.strip(),
    "toLower": lambda s: s.lower(),
    "first": lambda v: v[0] if len(v) else ("" if isinstance(v, str) else None),
    "take": lambda v, n: v[:max(n, 0)],
    "split": lambda s, d: s.split(d),
    "join": lambda items, d: d.join(items),
    "replace": lambda s, old, new: s.replace(old, new),
    "skip": _skip,
    "substring": lambda s, start, length=None: s[start:] if length is None else s[start : start + length],
    "starts_with": lambda s, p: s.lower().startswith(p.lower()),
    "ends_with": lambda s, p: s.lower().endswith(p.lower()),
    "guid": arm_guid,
    "to_lower": lambda s: s.lower(),
    "union": _union,
}

OPERATORS: Dict[str, Callable[..., Any]] = {
    "or": lambda a, b: bool(a) or bool(b),
    "and": lambda a, b: bool(a) and bool(b),
    "not": lambda a: not a,
    "equals": lambda a, b: a == b,
    "not_equals": lambda a, b: a != b,
    "greater_than_or_equals": lambda a, b: a >= b,
    "greater_than": lambda a, b: a > b,
    "less_than_or_equals": lambda a, b: a <= b,
    "less_than": lambda a, b: a < b,
    "substract": lambda a, b: a - b,
    "add": lambda a, b: a + b,
}
