"""Route templates and route matching as the Functions host does them (ASP.NET Core's tree
router), tools/route_templates.py: literals before constrained parameters before parameters
before catch-alls, segment by segment; method constraints skipped over; route values decoded."""

from __future__ import annotations

import pytest

from tools.route_templates import Router, RouteTemplateError, parse_template, split_path


def route(router: Router, method: str, path: str):
    m = router.match(method, split_path(path))
    return None if m is None else (m.target, m.values)


@pytest.fixture(scope="module")
def router() -> Router:
    r = Router()
    # registered in an order that does not help: the catch-all first
    r.add("{*path}", None, "catch_all")
    r.add("v1/embeddings", ["POST"], "v1_embeddings")
    r.add("v1/models", ["GET"], "v1_models")
    r.add("swagger.json", ["GET"], "swagger")
    r.add("openapi.json", ["GET"], "openapi")
    r.add("embeddings", ["POST"], "embeddings")
    r.add("images/embeddings", ["POST"], "image_embeddings")
    r.add("items/{name}", ["GET"], "item_by_name")
    r.add("items/{id:int}", ["GET"], "item_by_id")
    r.add("items/{id}/parts/{part?}", ["GET"], "item_part")
    r.add("files/{*rest}", ["GET"], "files")
    r.add("a/{x}", None, "a_x")
    r.add("{y}/b", None, "y_b")
    r.add("docs/{page=index}", ["GET"], "docs")
    return r


@pytest.mark.parametrize("method, path, expected", [
    ("POST", "/v1/embeddings", ("v1_embeddings", {})),
    ("GET", "/v1/models", ("v1_models", {})),
    ("GET", "/swagger.json", ("swagger", {})),
    ("GET", "/openapi.json", ("openapi", {})),
    ("POST", "/embeddings", ("embeddings", {})),
    ("POST", "/images/embeddings", ("image_embeddings", {})),
    # a route that matches the path but not the method is skipped: the catch-all gets it
    ("GET", "/embeddings", ("catch_all", {"path": "embeddings"})),
    ("DELETE", "/v1/models", ("catch_all", {"path": "v1/models"})),
    ("POST", "/v1/models", ("catch_all", {"path": "v1/models"})),
    ("GET", "/", ("catch_all", {})),
    ("PATCH", "/nothing/here/at/all", ("catch_all", {"path": "nothing/here/at/all"})),
    # case-insensitive literals, a trailing slash tolerated
    ("POST", "/V1/Embeddings", ("v1_embeddings", {})),
    ("post", "/EMBEDDINGS/", ("embeddings", {})),
    # constrained parameter before parameter; a value the constraint refuses falls through
    ("GET", "/items/42", ("item_by_id", {"id": "42"})),
    ("GET", "/items/chair", ("item_by_name", {"name": "chair"})),
    ("GET", "/items/99999999999", ("item_by_name", {"name": "99999999999"})),
    # optional parameter, present or not; defaults fill in
    ("GET", "/items/7/parts", ("item_part", {"id": "7"})),
    ("GET", "/items/7/parts/wheel", ("item_part", {"id": "7", "part": "wheel"})),
    ("GET", "/docs", ("docs", {"page": "index"})),
    ("GET", "/docs/intro", ("docs", {"page": "intro"})),
    # catch-all: the rest of the path, decoded except %2F
    ("GET", "/files/a/b%20c/d%2Fe", ("files", {"rest": "a/b c/d%2Fe"})),
    ("GET", "/files", ("files", {})),
    ("POST", "/files/x", ("catch_all", {"path": "files/x"})),
    # by segment: a literal first segment wins over a parameter first segment
    ("GET", "/a/b", ("a_x", {"x": "b"})),
    ("GET", "/q/b", ("y_b", {"y": "q"})),
    # a route value is decoded; a %2F inside a segment does not split it
    ("GET", "/items/caf%C3%A9", ("item_by_name", {"name": "café"})),
    ("GET", "/items/a%2Fb", ("item_by_name", {"name": "a%2Fb"})),
])
def test_most_specific_route_wins(router, method, path, expected):
    assert route(router, method, path) == expected


def test_no_route_without_a_catch_all():
    r = Router()
    r.add("embeddings", ["POST"], "embeddings")
    r.add("items/{id}", ["GET"], "item")
    assert route(r, "POST", "/embeddings") == ("embeddings", {})
    assert route(r, "GET", "/embeddings") is None  # the method constraint: no match at all
    assert route(r, "GET", "/items") is None
    assert route(r, "GET", "/items/1/2") is None
    assert route(r, "GET", "/items//") is None  # an empty segment binds no parameter
    assert route(r, "GET", "/") is None


def test_routes_without_methods_take_any_method():
    r = Router()
    r.add("x", None, "x")
    for method in ("GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS", "PROPFIND"):
        assert route(r, method, "/x") == ("x", {})


def test_constraints():
    r = Router()
    r.add("n/{v:int}", None, "int")
    r.add("n/{v:alpha:minlength(3)}", None, "alpha3")
    r.add("n/{v:regex(^[a-f0-9]{{4}}$)}", None, "hex4")
    r.add("n/{v:guid}", None, "guid")
    r.add("n/{v}", None, "any")
    assert route(r, "GET", "/n/12")[0] == "int"
    assert route(r, "GET", "/n/abcd")[0] == "alpha3"  # same precedence: ordered by template text
    assert route(r, "GET", "/n/ab")[0] == "any"
    assert route(r, "GET", "/n/0a1b")[0] == "hex4"
    assert route(r, "GET", "/n/5b0c6d2e-6f1a-4b8e-9d3c-2a1b0c9d8e7f")[0] == "guid"
    assert route(r, "GET", "/n/-")[0] == "any"


def test_templates():
    kinds = [(s.kind, s.name or s.text, s.optional) for s in parse_template("/api/{id:int}/{rest?}")]
    assert kinds == [("literal", "api", False), ("parameter", "id", False), ("parameter", "rest", True)]
    assert parse_template("~/x")[0].text == "x"
    assert parse_template("{{literal}}")[0].text == "{literal}"
    for bad in ("a/{*rest}/b", "file.{ext}", "{a}-{b}", "a//b", "{x}/{X}", "{v:datetime}", "{*p?}"):
        with pytest.raises(RouteTemplateError):
            parse_template(bad)


@pytest.mark.parametrize("constraint, accepted, refused", [
    ("int", ["2147483647", "-2147483648", "0"], ["2147483648", "-2147483649", "1.5"]),
    ("range(1,5)", ["1", "5"], ["0", "6"]),
    ("min(3)", ["3"], ["2"]),
    ("max(3)", ["3"], ["4"]),
    ("bool", ["true", "False", "TRUE"], ["yes", "1"]),
    ("length(3)", ["abc"], ["ab", "abcd"]),
    ("length(2,3)", ["ab", "abc"], ["a", "abcd"]),
    # .NET's regex constraint: case-insensitive, and unanchored unless the pattern anchors it
    ("regex(ab)", ["ab", "AB", "xaby"], ["a-b"]),
    ("regex(^ab$)", ["Ab"], ["xab"]),
])
def test_constraint_boundaries(constraint, accepted, refused):
    r = Router()
    r.add(f"n/{{v:{constraint}}}", None, "constrained")
    r.add("n/{v}", None, "any")
    for value in accepted:
        assert r.match("GET", split_path(f"/n/{value}")).target == "constrained", value
    for value in refused:
        assert r.match("GET", split_path(f"/n/{value}")).target == "any", value


def test_a_constrained_optional_parameter_comes_before_a_plain_one_whatever_their_names():
    """Both may be absent, so both match "/a": a constrained parameter has the higher precedence
    (RoutePrecedence: 2 before 3), whatever the template text's order."""
    r = Router()
    r.add("a/{y?}", None, "plain")
    r.add("a/{z:int?}", None, "constrained")
    assert r.match("GET", split_path("/a")).target == "constrained"


def test_an_optional_parameter_with_a_default_is_refused():
    """ASP.NET refuses "{x?=a}" (an optional parameter cannot have a default value)."""
    with pytest.raises(RouteTemplateError):
        parse_template("{x?=a}")
