"""Route templates and route matching as the Azure Functions host does them.

The Functions host maps each HTTP-triggered function with ASP.NET Core's attribute-routing tree
router (``TreeRouteBuilder``/``TreeRouter``), the function's methods as an ``httpMethod`` route
constraint. This module reproduces what a request sees of that:

- templates: literal segments, ``{name}``, optional ``{name?}``, defaults ``{name=value}``,
  catch-all ``{*name}`` / ``{**name}``, inline constraints ``{name:int}``, ``{name:regex(...)}``...;
- matching segment by segment, literals case-insensitively; at each segment a literal is tried
  before a constrained parameter, before a parameter, before a constrained catch-all, before a
  catch-all, so the most specific route wins; routes that end at the same place are ordered by
  precedence, then by template text;
- a candidate whose constraints (the HTTP method included) reject the request is skipped and the
  next one is tried, so a catch-all registered for every method receives ``GET /embeddings`` when
  ``embeddings`` is POST-only;
- route values are the percent-decoded segments (``%2F`` stays encoded, as in Kestrel); a
  catch-all's value is the rest of the path.

Complex segments (``{a}.{b}``, ``file-{id}``) and the ``datetime`` constraint are refused when the
routes are built, with a message saying so, rather than matched differently from Azure.
"""

from __future__ import annotations

import math
import re
import uuid
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Iterator, Sequence
from urllib.parse import unquote

__all__ = ["RouteTemplateError", "Route", "RouteMatch", "Router", "parse_template", "split_path"]


class RouteTemplateError(ValueError):
    """A route template the local host cannot serve the way the Functions host would."""


# -- constraints ----------------------------------------------------------------------------------

def _int_between(lo: int, hi: int) -> Callable[[str], bool]:
    def check(v: str) -> bool:
        if not re.fullmatch(r"[+-]?[0-9]+", v.strip()):
            return False
        return lo <= int(v) <= hi
    return check


def _is_float(v: str) -> bool:
    try:
        return math.isfinite(float(v))
    except ValueError:
        return False


def _is_guid(v: str) -> bool:
    try:
        uuid.UUID(v.strip().strip("{}()"))
        return True
    except ValueError:
        return False


def _ints(args: str, n: int, name: str) -> list[int]:
    parts = [a.strip() for a in args.split(",")] if args else []
    if len(parts) != n or not all(re.fullmatch(r"-?[0-9]+", p) for p in parts):
        raise RouteTemplateError(f"the route constraint '{name}' takes {n} integer argument(s)")
    return [int(p) for p in parts]


def _constraint(name: str, args: str | None) -> Callable[[str], bool]:
    """The check for one inline constraint (ASP.NET Core's default constraint map)."""
    key = name.lower()
    if key == "int":
        return _int_between(-2**31, 2**31 - 1)
    if key == "long":
        return _int_between(-2**63, 2**63 - 1)
    if key == "bool":
        return lambda v: v.strip().lower() in ("true", "false")
    if key == "alpha":
        return lambda v: re.fullmatch(r"[A-Za-z]*", v) is not None
    if key == "guid":
        return _is_guid
    if key in ("double", "float", "decimal"):
        return _is_float
    if key == "required":
        return lambda v: v != ""
    if key == "min":
        (m,) = _ints(args or "", 1, name)
        return lambda v: _int_between(m, 2**63 - 1)(v)
    if key == "max":
        (m,) = _ints(args or "", 1, name)
        return lambda v: _int_between(-2**63, m)(v)
    if key == "range":
        lo, hi = _ints(args or "", 2, name)
        return _int_between(lo, hi)
    if key == "minlength":
        (m,) = _ints(args or "", 1, name)
        return lambda v: len(v) >= m
    if key == "maxlength":
        (m,) = _ints(args or "", 1, name)
        return lambda v: len(v) <= m
    if key == "length":
        if args is not None and "," not in args:
            (n,) = _ints(args, 1, name)
            return lambda v: len(v) == n
        lo, hi = _ints(args or "", 2, name)
        return lambda v: lo <= len(v) <= hi
    if key == "regex":
        if args is None:
            raise RouteTemplateError("the route constraint 'regex' needs a pattern")
        try:  # .NET: culture-invariant, case-insensitive, not anchored unless the pattern is
            rx = re.compile(args, re.IGNORECASE)
        except re.error as exc:
            raise RouteTemplateError(f"invalid regex route constraint {args!r}: {exc}") from None
        return lambda v: rx.search(v) is not None
    raise RouteTemplateError(f"the local host does not support the route constraint '{name}'")


# -- templates ------------------------------------------------------------------------------------

LITERAL, PARAMETER, CATCH_ALL = "literal", "parameter", "catch-all"


@dataclass(frozen=True)
class Segment:
    kind: str  # LITERAL, PARAMETER or CATCH_ALL
    text: str = ""  # a literal's text
    name: str = ""  # a parameter's name
    optional: bool = False
    default: str | None = None
    constraints: tuple[Callable[[str], bool], ...] = ()

    @property
    def constrained(self) -> bool:
        return bool(self.constraints)

    @property
    def may_be_absent(self) -> bool:
        return self.kind == CATCH_ALL or self.optional or self.default is not None

    @property
    def precedence_digit(self) -> int:
        # RoutePrecedence.ComputeInbound: 1 literal, 2 constrained parameter, 3 parameter,
        # 4 constrained catch-all, 5 catch-all.
        if self.kind == LITERAL:
            return 1
        digit = 5 if self.kind == CATCH_ALL else 3
        return digit - 1 if self.constraints else digit


def _split_constraints(text: str) -> tuple[str, list[str]]:
    """``name:c1:c2(args)`` -> (name, [c1, c2(args)]); ``:`` inside parentheses is kept."""
    parts, depth, cur = [], 0, []
    for ch in text:
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth = max(0, depth - 1)
        if ch == ":" and depth == 0:
            parts.append("".join(cur))
            cur = []
        else:
            cur.append(ch)
    parts.append("".join(cur))
    return parts[0], parts[1:]


def _parse_parameter(body: str, template: str) -> Segment:
    catch_all = False
    if body.startswith("**"):
        catch_all, body = True, body[2:]
    elif body.startswith("*"):
        catch_all, body = True, body[1:]
    default = None
    # A default value follows the first '=' outside a constraint's parentheses.
    depth = 0
    for i, ch in enumerate(body):
        depth += ch == "("
        depth -= ch == ")"
        if ch == "=" and depth == 0:
            body, default = body[:i], body[i + 1:]
            break
    optional = default is None and body.endswith("?")
    if optional:
        body = body[:-1]
    name, raw_constraints = _split_constraints(body)
    if not name or not re.fullmatch(r"[^{}/?*=:]+", name):
        raise RouteTemplateError(f"invalid parameter name in route template {template!r}")
    if catch_all and optional:
        raise RouteTemplateError(f"a catch-all parameter cannot be optional in {template!r}")
    checks = []
    for c in raw_constraints:
        m = re.fullmatch(r"([A-Za-z]+)(?:\((.*)\))?", c, re.DOTALL)
        if not m:
            raise RouteTemplateError(f"invalid route constraint {c!r} in {template!r}")
        checks.append(_constraint(m.group(1), m.group(2)))
    return Segment(CATCH_ALL if catch_all else PARAMETER, name=name, optional=optional,
                   default=default, constraints=tuple(checks))


def parse_template(template: str) -> list[Segment]:
    """The segments of a route template (a leading ``/`` or ``~/`` is ignored, as in ASP.NET)."""
    text = template[2:] if template.startswith("~/") else template.removeprefix("/")
    text = text.removesuffix("/")
    segments: list[Segment] = []
    if not text:
        return segments
    names: set[str] = set()
    raw_segments = text.split("/")
    for i, raw in enumerate(raw_segments):
        if raw == "":
            raise RouteTemplateError(f"empty segment in route template {template!r}")
        if raw.startswith("{") and raw.endswith("}") and raw.count("{") - raw.count("{{") * 2 == 1:
            # '{{' and '}}' are escaped braces (e.g. in a regex constraint)
            seg = _parse_parameter(raw[1:-1].replace("{{", "{").replace("}}", "}"), template)
            if seg.name.lower() in names:
                raise RouteTemplateError(f"parameter '{seg.name}' appears twice in {template!r}")
            names.add(seg.name.lower())
            if seg.kind == CATCH_ALL and i != len(raw_segments) - 1:
                raise RouteTemplateError(f"a catch-all parameter must be the last segment of {template!r}")
        else:
            literal = raw.replace("{{", "\0").replace("}}", "\1")
            if "{" in literal or "}" in literal:
                raise RouteTemplateError(
                    f"complex segment {raw!r} in {template!r}: the local host supports literal "
                    "segments and whole-segment parameters only")
            seg = Segment(LITERAL, text=literal.replace("\0", "{").replace("\1", "}"))
        segments.append(seg)
    return segments


# -- request paths --------------------------------------------------------------------------------

_ENCODED_SLASH = re.compile(r"(%2[fF])")


def _decode_segment(raw: str) -> str:
    """Percent-decode a path segment as Kestrel does: ``%2F`` stays encoded, and bytes that are
    not valid UTF-8 stay as they were sent."""
    if "%" not in raw:
        return raw
    out = []
    for piece in _ENCODED_SLASH.split(raw):
        if _ENCODED_SLASH.fullmatch(piece):
            out.append(piece)
            continue
        try:
            out.append(unquote(piece, errors="strict"))
        except UnicodeDecodeError:
            out.append(piece)
    return "".join(out)


def split_path(raw_path: str) -> list[str]:
    """The decoded segments of a request path (``/a/b/`` -> ``["a", "b"]``); a trailing slash
    does not make a segment, as with ASP.NET's PathTokenizer."""
    if not raw_path.startswith("/"):
        raise ValueError("the request path must start with '/'")
    body = raw_path[1:]
    if body.endswith("/"):
        body = body[:-1]
    if not body:
        return []
    return [_decode_segment(s) for s in body.split("/")]


# -- the matching tree (TreeRouter's UrlMatchingTree / TreeEnumerator) ------------------------------

@dataclass
class Route:
    template: str
    segments: list[Segment]
    methods: frozenset[str] | None  # upper case; None: any method
    target: Any
    precedence: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        self.precedence = tuple(s.precedence_digit for s in self.segments)

    def allows(self, method: str) -> bool:
        return self.methods is None or method.upper() in self.methods

    def bind(self, path: Sequence[str]) -> dict[str, str] | None:
        """Route values if the path matches the template (RoutePatternMatcher.TryMatch) and every
        inline constraint accepts them, else None."""
        values: dict[str, str] = {}
        for i, seg in enumerate(self.segments):
            if i >= len(path):
                if not seg.may_be_absent:
                    return None
                if seg.default is not None:
                    values[seg.name] = seg.default
                continue
            if seg.kind == LITERAL:
                if path[i].casefold() != seg.text.casefold():
                    return None
            elif seg.kind == CATCH_ALL:
                values[seg.name] = "/".join(path[i:])
                break
            else:
                if path[i] == "":
                    return None
                values[seg.name] = path[i]
        else:
            if len(path) > len(self.segments):
                return None
        for seg in self.segments:
            if seg.constraints and seg.name in values:
                if not all(check(values[seg.name]) for check in seg.constraints):
                    return None
        return values


@dataclass
class _Node:
    depth: int
    catch_all: bool = False
    matches: list[Route] = field(default_factory=list)
    literals: dict[str, "_Node"] = field(default_factory=dict)  # casefolded keys
    constrained_parameters: "_Node | None" = None
    parameters: "_Node | None" = None
    constrained_catch_alls: "_Node | None" = None
    catch_alls: "_Node | None" = None

    def add_match(self, route: Route) -> None:
        self.matches.append(route)
        self.matches.sort(key=lambda r: (r.precedence, r.template))


@dataclass(frozen=True)
class RouteMatch:
    route: Route
    values: dict[str, str]

    @property
    def target(self) -> Any:
        return self.route.target


class Router:
    """Functions' HTTP routes; ``match(method, segments)`` gives the route that serves a request."""

    def __init__(self) -> None:
        self._root = _Node(depth=0)
        self.routes: list[Route] = []

    def add(self, template: str, methods: Iterable[str] | None, target: Any) -> Route:
        route = Route(template, parse_template(template),
                      None if methods is None else frozenset(m.upper() for m in methods), target)
        self.routes.append(route)
        node = self._root
        segs = route.segments
        for i, seg in enumerate(segs):
            if seg.kind == LITERAL:
                node = node.literals.setdefault(seg.text.casefold(), _Node(depth=i + 1))
                continue
            # A parameter whose remaining segments may all be absent also matches a shorter path.
            if all(s.kind != LITERAL and s.may_be_absent for s in segs[i:]):
                node.add_match(route)
            attr = {(PARAMETER, True): "constrained_parameters", (PARAMETER, False): "parameters",
                    (CATCH_ALL, True): "constrained_catch_alls",
                    (CATCH_ALL, False): "catch_alls"}[(seg.kind, seg.constrained)]
            child = getattr(node, attr)
            if child is None:
                child = _Node(depth=i + 1, catch_all=seg.kind == CATCH_ALL)
                setattr(node, attr, child)
            node = child
        node.add_match(route)
        return route

    def _candidates(self, path: Sequence[str]) -> Iterator[Route]:
        """Routes in the order TreeRouter tries them: depth first, literal before constrained
        parameter before parameter before constrained catch-all before catch-all."""
        stack = [self._root]
        count = len(path)
        while stack:
            node = stack.pop()
            if node.catch_all and node.matches:
                yield from node.matches
                continue
            if node.depth == count:
                yield from node.matches
                continue
            for child in (node.catch_alls, node.constrained_catch_alls, node.parameters,
                          node.constrained_parameters):
                if child is not None:
                    stack.append(child)
            nxt = node.literals.get(path[node.depth].casefold())
            if nxt is not None:
                stack.append(nxt)

    def match(self, method: str, path: Sequence[str]) -> RouteMatch | None:
        seen: set[int] = set()
        for route in self._candidates(path):
            if id(route) in seen:
                continue
            seen.add(id(route))
            if not route.allows(method):
                continue
            values = route.bind(path)
            if values is not None:
                return RouteMatch(route, values)
        return None
