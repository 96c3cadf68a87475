"""Tests for jade.core.filters: the three filter dialects, coercion, errors, index terms."""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from jade.core.filters import (
    Filter,
    FilterError,
    index_terms,
    normalize_value,
    parse_filter,
)

FAST = settings(max_examples=100, deadline=None, database=None)
SLOW = settings(max_examples=40, deadline=None, database=None)  # recursive filter strategies


def m(f: object, md: dict | None) -> bool:
    return parse_filter(f).matches(md)


def cond(field: str, op: str, **kw: object) -> dict:
    return {"conditions": [{"field": field, "op": op, **kw}]}


# ------------------------------------------------------------------ match-all


@pytest.mark.parametrize("f", [None, {}, {"$and": [{}]}, {"$or": [{}, {"a": 1}]}])
def test_match_all(f: object) -> None:
    flt = parse_filter(f)
    assert flt.is_match_all
    assert flt.matches({}) and flt.matches(None) and flt.matches({"a": 2})
    assert flt.equality_terms() is None


def test_not_match_all_matches_nothing() -> None:
    flt = parse_filter({"$not": {}})
    assert not flt.is_match_all
    assert not flt.matches({"a": 1})


# ------------------------------------------------------------------ dialect 1


def test_equality_map() -> None:
    f = parse_filter({"category": "even", "index": "2"})
    assert f.matches({"category": "even", "index": 2})
    assert f.matches({"category": "even", "index": "2", "other": 1})
    assert not f.matches({"category": "odd", "index": 2})
    assert not f.matches({"category": "even"})
    assert not f.matches(None)


def test_metadata_prefix_stripped_everywhere() -> None:
    md = {"category": "even", "n": 5}
    assert m({"metadata.category": "even"}, md)
    assert m({"metadata.n": {"$gt": 4}}, md)
    assert m({"$or": [{"metadata.category": "x"}, {"metadata.n": 5}]}, md)
    assert m(cond("metadata.category", "EQUALS", value="even"), md)
    assert not m({"metadata.category": "odd"}, md)
    assert parse_filter({"metadata.a": 1}).canonical == parse_filter({"a": 1}).canonical


# ------------------------------------------------------------------ coercion


@pytest.mark.parametrize(
    ("stored", "operand", "equal"),
    [
        (9.99, "9.99", True),
        ("9.99", 9.99, True),
        (True, "True", True),
        (True, "true", True),
        ("TRUE", True, True),
        (False, "false", True),
        ("False", False, True),
        (True, "False", False),
        (2, "2", True),
        (2, 2.0, True),
        ("2.0", 2, True),
        ("2", "2.00", True),
        ("1e3", 1000, True),
        (True, 1, False),
        (1, True, False),
        ("1", True, False),
        (0, False, False),
        ("abc", "abc", True),
        ("abc", "ABC", False),
        (" 2", 2, False),
        ("1_0", 10, False),
        ("nan", "nan", True),
        (None, "None", True),
        ("2", "two", False),
    ],
)
def test_equality_coercion(stored: object, operand: object, equal: bool) -> None:
    assert m({"f": operand}, {"f": stored}) is equal
    assert m({"f": {"$ne": operand}}, {"f": stored}) is not equal
    assert (normalize_value(stored) == normalize_value(operand)) is equal


@pytest.mark.parametrize(
    ("value", "key"),
    [
        (2, "n:2"),
        (2.0, "n:2"),
        ("2", "n:2"),
        ("2.0", "n:2"),
        (-0.0, "n:0"),
        (9.99, "n:9.99"),
        ("9.99", "n:9.99"),
        (1e20, "n:1e+20"),
        (10**20, "n:1e+20"),
        (True, "b:true"),
        ("tRuE", "b:true"),
        (False, "b:false"),
        ("FALSE", "b:false"),
        ("even", "s:even"),
        ("", "s:"),
        ("inf", "s:inf"),
        (None, "s:None"),
    ],
)
def test_normalize_value(value: object, key: str) -> None:
    assert normalize_value(value) == key


@pytest.mark.parametrize(
    ("stored", "f", "expected"),
    [
        ("10", {"$gt": 9}, True),
        (10, {"$gt": "9.5"}, True),
        ("9.99", {"$lt": 10}, True),
        (5, {"$gte": 5}, True),
        (5, {"$gt": 5}, False),
        (5, {"$lte": 5.0}, True),
        (5, {"$lt": 5}, False),
        ("abc", {"$gt": 5}, False),  # number vs non-number: no match
        (5, {"$gt": "abc"}, False),
        (True, {"$gt": 0}, False),  # booleans are not numbers
        ("true", {"$gt": "a"}, False),
        ("b", {"$gt": "a"}, True),  # two plain strings compare as strings
        ("2024-02-01", {"$gte": "2024-01-15"}, True),
        ([1, 2], {"$gt": 0}, False),
        ({"x": 1}, {"$gt": 0}, False),
    ],
)
def test_ordering(stored: object, f: dict, expected: bool) -> None:
    assert m({"f": f}, {"f": stored}) is expected


# ------------------------------------------------------------------ dialect 2 operators

MD = {"s": "hello world", "n": "7", "tags": ["a", "b", "3"], "flag": "True", "x": None}


@pytest.mark.parametrize(
    ("f", "expected"),
    [
        ({"s": {"$eq": "hello world"}}, True),
        ({"s": {"$eq": "hello"}}, False),
        ({"s": {"$ne": "hello"}}, True),
        ({"n": {"$ne": 7}}, False),
        ({"n": {"$in": [1, 7.0]}}, True),
        ({"n": {"$in": ["x", "y"]}}, False),
        ({"n": {"$in": []}}, False),
        ({"n": {"$nin": [1, 2]}}, True),
        ({"n": {"$nin": ["7"]}}, False),
        ({"tags": {"$in": ["z", "b"]}}, True),
        ({"tags": {"$in": [3]}}, True),
        ({"tags": {"$in": ["z"]}}, False),
        ({"tags": {"$nin": ["a"]}}, False),
        ({"tags": {"$contains": "a"}}, True),
        ({"tags": {"$contains": 3}}, True),
        ({"tags": {"$contains": "c"}}, False),
        ({"s": {"$contains": "lo wo"}}, True),
        ({"s": {"$contains": "xyz"}}, False),
        ({"n": {"$contains": 7}}, True),  # string field: substring of str(operand)
        ({"tags": {"$all": ["a", 3]}}, True),
        ({"tags": {"$all": ["a", "z"]}}, False),
        ({"tags": {"$all": []}}, True),
        ({"s": {"$all": ["hello world"]}}, False),  # $all needs a list field
        ({"tags": "a"}, True),  # equality against a list field: any element
        ({"tags": "['a', 'b', '3']"}, False),  # no whole-list repr equality
        ({"s": {"$exists": True}}, True),
        ({"x": {"$exists": True}}, True),  # null is present
        ({"s": {"$exists": False}}, False),
        ({"flag": True}, True),
        ({"flag": {"$eq": "TRUE"}}, True),
        ({"n": {"$gt": 5, "$lt": 8}}, True),
        ({"n": {"$gt": 5, "$lt": 7}}, False),
    ],
)
def test_operator_map(f: dict, expected: bool) -> None:
    assert m(f, MD) is expected


def test_contains_on_number_field_is_no_match() -> None:
    assert not m({"f": {"$contains": 1}}, {"f": 12})
    assert m({"f": {"$contains": 1}}, {"f": "12"})


@pytest.mark.parametrize(
    ("op", "operand", "missing_matches"),
    [
        ("$eq", 1, False),
        ("$ne", 1, True),
        ("$gt", 1, False),
        ("$gte", 1, False),
        ("$lt", 1, False),
        ("$lte", 1, False),
        ("$in", [1], False),
        ("$nin", [1], True),
        ("$contains", 1, False),
        ("$all", [1], False),
        ("$exists", True, False),
        ("$exists", False, True),
    ],
)
def test_missing_field_dialect2(op: str, operand: object, missing_matches: bool) -> None:
    assert m({"f": {op: operand}}, {"other": 1}) is missing_matches
    assert m({"f": {op: operand}}, None) is missing_matches


def test_dotted_paths() -> None:
    md = {"a": {"b": {"c": 5}}, "x.y": 1, "x": {"y": 2}}
    assert m({"a.b.c": 5}, md)
    assert m({"metadata.a.b.c": {"$gt": 4}}, md)
    assert not m({"a.b.d": {"$exists": True}}, md)
    assert m({"x.y": 1}, md)  # literal key preferred over nested path
    assert not m({"x.y": 2}, md)
    assert m({"p.q": 3}, {"p": {"q": 3}})
    assert m({"a.b": {"$exists": True}}, md)
    assert not m({"a": 5}, md)  # dict values never equal a scalar


def test_logic_nesting() -> None:
    md = {"a": 1, "b": "x", "c": [1, 2]}
    assert m({"$and": [{"a": 1}, {"b": "x"}]}, md)
    assert not m({"$and": [{"a": 1}, {"b": "y"}]}, md)
    assert m({"$or": [{"a": 2}, {"b": "x"}]}, md)
    assert not m({"$or": [{"a": 2}, {"b": "y"}]}, md)
    assert m({"$not": {"a": 2}}, md)
    assert not m({"$not": {"a": 1}}, md)
    assert m({"$not": {"$not": {"a": 1}}}, md)
    deep = {"$or": [{"$and": [{"a": 1}, {"$not": {"c": {"$contains": 3}}}]}, {"b": "zz"}]}
    assert m(deep, md)
    assert not m({"$and": [deep, {"$not": {"b": "x"}}]}, md)
    assert not m({"a": 1, "b": "y"}, md)  # several keys are ANDed
    assert m({"a": 1, "$or": [{"b": "x"}, {"b": "y"}]}, md)
    assert m(
        {"$or": [{"conditions": [{"field": "a", "op": "EQUALS", "value": 9}]}, {"b": "x"}]}, md
    )


# ------------------------------------------------------------------ dialect 3

MD3 = {"category": "books", "price": "9.99", "tags": ["x", "y"], "title": "Python 3 Cookbook"}


@pytest.mark.parametrize(
    ("op", "kw", "expected"),
    [
        ("EQUALS", {"value": "books"}, True),
        ("EQUALS", {"value": "toys"}, False),
        ("NOT_EQUALS", {"value": "toys"}, True),
        ("NOT_EQUALS", {"value": "books"}, False),
        ("GREATER_THAN", {"value": 9}, True),
        ("GREATER_THAN", {"value": 9.99}, False),
        ("GREATER_THAN_OR_EQUAL", {"value": "9.99"}, True),
        ("LESS_THAN", {"value": 10}, True),
        ("LESS_THAN", {"value": 9.99}, False),
        ("LESS_THAN_OR_EQUAL", {"value": 9.99}, True),
        ("CONTAINS", {"value": "book"}, True),
        ("CONTAINS", {"value": "toy"}, False),
        ("NOT_CONTAINS", {"value": "toy"}, True),
        ("NOT_CONTAINS", {"value": "book"}, False),
        ("IN", {"values": ["toys", "books"]}, True),
        ("IN", {"values": ["toys"]}, False),
        ("NOT_IN", {"values": ["toys"]}, True),
        ("NOT_IN", {"values": ["books"]}, False),
        ("EXISTS", {}, True),
        ("NOT_EXISTS", {}, False),
        ("MATCHES_REGEX", {"value": "^bo+k"}, True),
        ("MATCHES_REGEX", {"value": "^ok"}, False),
    ],
)
def test_condition_ops(op: str, kw: dict, expected: bool) -> None:
    field = "price" if "THAN" in op else "metadata.category"
    assert m(cond(field, op, **kw), MD3) is expected
    assert m(cond(field, op.lower(), **kw), MD3) is expected  # op names case-insensitive


@pytest.mark.parametrize(
    ("op", "kw", "missing_matches"),
    [
        ("EQUALS", {"value": 1}, False),
        ("NOT_EQUALS", {"value": 1}, True),
        ("GREATER_THAN", {"value": 1}, False),
        ("GREATER_THAN_OR_EQUAL", {"value": 1}, False),
        ("LESS_THAN", {"value": 1}, False),
        ("LESS_THAN_OR_EQUAL", {"value": 1}, False),
        ("CONTAINS", {"value": 1}, False),
        ("NOT_CONTAINS", {"value": 1}, True),
        ("IN", {"values": [1]}, False),
        ("NOT_IN", {"values": [1]}, True),
        ("EXISTS", {}, False),
        ("NOT_EXISTS", {}, True),
        ("MATCHES_REGEX", {"value": ".*"}, False),
    ],
)
def test_missing_field_dialect3(op: str, kw: dict, missing_matches: bool) -> None:
    assert m(cond("nope", op, **kw), MD3) is missing_matches


def test_condition_list_lists_and_regex() -> None:
    assert m(cond("tags", "CONTAINS", value="x"), MD3)
    assert m(cond("tags", "IN", values=["q", "y"]), MD3)
    assert m(cond("title", "MATCHES_REGEX", value=r"\d"), MD3)  # search, not match
    assert m(cond("n", "MATCHES_REGEX", value="^4"), {"n": 42})  # scalars via str()
    assert not m(cond("tags", "MATCHES_REGEX", value="x"), MD3)


def test_combination_and_nested_groups() -> None:
    yes = {"field": "category", "op": "EQUALS", "value": "books"}
    no = {"field": "category", "op": "EQUALS", "value": "toys"}
    assert not m({"conditions": [yes, no]}, MD3)  # default AND
    assert not m({"combination": "and", "conditions": [yes, no]}, MD3)
    assert m({"combination": "Or", "conditions": [yes, no]}, MD3)
    nested = {
        "combination": "AND",
        "conditions": [
            yes,
            {
                "combination": "OR",
                "conditions": [no, {"field": "price", "op": "LESS_THAN", "value": 10}],
            },
        ],
    }
    assert m(nested, MD3)
    nested["conditions"][1]["conditions"][1]["value"] = 5  # type: ignore[index]
    assert not m(nested, MD3)


# ------------------------------------------------------------------ errors


@pytest.mark.parametrize(
    ("f", "needle"),
    [
        ([], "must be an object"),
        ("a=1", "must be an object"),
        (5, "must be an object"),
        ({"a": {"$regex": "x"}}, "'$regex'"),
        ({"$xor": []}, "'$xor'"),
        ({"a": {"b": 1}}, "nested-object"),
        ({"a": {"$eq": 1, "b": 1}}, "'b'"),
        ({"a": {}}, "empty operator"),
        ({"a": [1, 2]}, "scalar"),
        ({"$and": []}, "must not be empty"),
        ({"$or": []}, "must not be empty"),
        ({"$and": {"a": 1}}, "array"),
        ({"$and": [1]}, "$and[0]"),
        ({"$not": [{"a": 1}]}, "$not"),
        ({"a": {"$in": "x"}}, "array"),
        ({"a": {"$nin": 1}}, "array"),
        ({"a": {"$in": [[1]]}}, "element 0"),
        ({"a": {"$all": "x"}}, "array"),
        ({"a": {"$exists": 1}}, "boolean"),
        ({"a": {"$exists": "true"}}, "boolean"),
        ({"a": {"$gt": [1]}}, "$gt"),
        ({"a": {"$gt": {"x": 1}}}, "$gt"),
        ({"a": {"$gt": None}}, "number or string"),
        ({"a": {"$lt": True}}, "number or string"),
        ({"a": {"$eq": [1]}}, "scalar"),
        ({"a": {"$contains": {"x": 1}}}, "scalar"),
        ({"metadata.": 1}, "empty field"),
        ({"conditions": []}, "must not be empty"),
        ({"conditions": [{"op": "EQUALS", "value": 1}]}, "'field'"),
        ({"conditions": [{"field": "a", "value": 1}]}, "'op'"),
        ({"conditions": [{"field": "a", "op": "LIKE", "value": 1}]}, "'LIKE'"),
        ({"conditions": [{"field": "a", "op": 3, "value": 1}]}, "unknown op"),
        ({"conditions": [{"field": "a", "op": "EQUALS"}]}, "'value'"),
        ({"conditions": [{"field": "a", "op": "EQUALS", "value": None}]}, "'value'"),
        ({"conditions": [{"field": "a", "op": "IN", "value": [1]}]}, "'values'"),
        ({"conditions": [{"field": "a", "op": "IN", "values": "x"}]}, "array"),
        ({"conditions": [{"field": "a", "op": "NOT_IN", "values": 1}]}, "array"),
        ({"conditions": [{"field": "a", "op": "EQUALS", "value": [1]}]}, "scalar"),
        ({"conditions": [{"field": "a", "op": "GREATER_THAN", "value": True}]}, "number"),
        ({"conditions": [{"field": "a", "op": "MATCHES_REGEX", "value": "("}]}, "invalid regex"),
        ({"conditions": [{"field": "a", "op": "MATCHES_REGEX", "value": 5}]}, "string"),
        ({"conditions": [{"field": "a", "op": "MATCHES_REGEX", "value": "a" * 1001}]}, "1000"),
        ({"conditions": [{"field": 5, "op": "EQUALS", "value": 1}]}, "field name"),
        ({"conditions": ["a"]}, "conditions[0]"),
        ({"conditions": [{"field": "a", "op": "EQUALS", "value": 1, "x": 2}]}, "'x'"),
        ({"combination": "XOR", "conditions": [{"field": "a", "op": "EXISTS"}]}, "'XOR'"),
        ({"combination": 1, "conditions": [{"field": "a", "op": "EXISTS"}]}, "combination"),
        ({"conditions": [{"field": "a", "op": "EXISTS"}], "b": 1}, "'b'"),
        ({"conditions": [{"conditions": []}]}, "conditions[0]"),
        ({"conditions": [{"conditions": "x"}]}, "array"),
        ({1: "a"}, "string"),
    ],
)
def test_errors(f: object, needle: str) -> None:
    with pytest.raises(FilterError) as ei:
        parse_filter(f)
    assert needle in str(ei.value)
    assert isinstance(ei.value, ValueError)


def test_error_names_location() -> None:
    with pytest.raises(FilterError, match=r"'\$foo'.*filters\.\$or\[1\]"):
        parse_filter({"$or": [{"a": 1}, {"b": {"$foo": 2}}]})


def test_depth_limit() -> None:
    f: dict = {"a": 1}
    for _ in range(60):
        f = {"$not": f}
    assert m(f, {"a": 1})  # 60 levels: fine (even count of $not)
    for _ in range(10):
        f = {"$and": [f]}
    with pytest.raises(FilterError, match="deeper than 64"):
        parse_filter(f)
    g: dict = {"conditions": [{"field": "a", "op": "EXISTS"}]}
    for _ in range(70):
        g = {"conditions": [g]}
    with pytest.raises(FilterError, match="deeper than 64"):
        parse_filter(g)


# ------------------------------------------------------------------ canonical / terms


def test_canonical_key_order_and_equivalents() -> None:
    a = parse_filter({"x": 1, "y": {"$gt": 2, "$lt": 5}, "$or": [{"p": "a"}, {"q": True}]})
    b = parse_filter(
        {"$or": [{"q": "true"}, {"p": "a"}], "y": {"$lt": 5, "$gt": "2"}, "metadata.x": "1"}
    )
    assert a.canonical == b.canonical
    assert a == b and hash(a) == hash(b)
    c = parse_filter(
        {
            "conditions": [
                {"field": "x", "op": "EQUALS", "value": 1},
                {"field": "y", "op": "greater_than", "value": 2},
            ]
        }
    )
    d = parse_filter({"y": {"$gt": 2}, "x": 1})
    assert c.canonical == d.canonical
    assert parse_filter({"x": 1}).canonical != parse_filter({"x": 2}).canonical
    assert parse_filter({"x": {"$gt": 1}}).canonical != parse_filter({"x": {"$gte": 1}}).canonical
    assert isinstance(a, Filter) and isinstance(a.canonical, str)


def test_equality_terms() -> None:
    f = parse_filter(
        {
            "a": 1,
            "$and": [{"b": "x"}, {"c": {"$gt": 1}}],
            "$or": [{"d": 1}, {"e": 2}],
            "$not": {"g": 1},
        }
    )
    assert sorted(f.equality_terms() or []) == [("a", "n:1"), ("b", "s:x")]
    assert parse_filter({"a": {"$ne": 1}}).equality_terms() is None
    assert parse_filter({"$or": [{"a": 1}, {"a": 2}]}).equality_terms() is None
    g = parse_filter(
        {
            "conditions": [
                {"field": "metadata.k", "op": "EQUALS", "value": True},
                {"conditions": [{"field": "z", "op": "EQUALS", "value": "q"}]},
                {
                    "combination": "OR",
                    "conditions": [
                        {"field": "w", "op": "EQUALS", "value": 1},
                        {"field": "w", "op": "EQUALS", "value": 2},
                    ],
                },
            ]
        }
    )
    assert sorted(g.equality_terms() or []) == [("k", "b:true"), ("z", "s:q")]


def test_index_terms() -> None:
    md = {"a": 2.0, "b": "True", "tags": ["x", 3, ["nested"]], "n": {"m": "v", "o": {"p": 1}}}
    terms = set(index_terms(md))
    assert terms == {
        ("a", "n:2"),
        ("b", "b:true"),
        ("tags", "s:x"),
        ("tags", "n:3"),
        ("n.m", "s:v"),
        ("n.o.p", "n:1"),
    }
    assert index_terms(None) == [] and index_terms({}) == []


# ------------------------------------------------------------------ properties

_NUM_ORACLE = re.compile(r"[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?", re.ASCII)


@FAST
@given(st.text(alphabet="0123456789+-.eE_ x\u0663", max_size=8) | st.text(max_size=6))
def test_numeric_string_recognition(s: str) -> None:
    key = normalize_value(s)
    if _NUM_ORACLE.fullmatch(s) and abs(float(s)) != float("inf"):
        assert key.startswith("n:")
    elif s.lower() in ("true", "false"):
        assert key.startswith("b:")
    else:
        assert key == "s:" + s


FIELDS = ["a", "b", "tags", "n.x"]
scalars = st.one_of(
    st.sampled_from(["x", "y", "True", "false", "2", "2.0", "9.99", "", "-1", "1e2"]),
    st.integers(-3, 3),
    st.sampled_from([2.0, 9.99, -0.0, 100.0]),
    st.booleans(),
    st.none(),
)
scalars_nn = scalars.filter(lambda v: v is not None)  # dialect 3 treats null as "no value"
values = st.one_of(scalars, st.lists(scalars, max_size=3))
metadata = st.fixed_dictionaries(
    {},
    optional={
        "a": values,
        "b": values,
        "tags": st.lists(scalars, max_size=4),
        "n": st.fixed_dictionaries({}, optional={"x": values}),
        "n.x": scalars,
    },
)
ORD_OPERANDS = st.one_of(st.sampled_from(["x", "2", "9.99", "-1"]), st.integers(-3, 3))
# (dialect-2 op, dialect-3 op, operand strategy, operand key in the condition)
LEAF_OPS = [
    ("$eq", "EQUALS", scalars_nn, "value"),
    ("$ne", "NOT_EQUALS", scalars_nn, "value"),
    ("$gt", "GREATER_THAN", ORD_OPERANDS, "value"),
    ("$gte", "GREATER_THAN_OR_EQUAL", ORD_OPERANDS, "value"),
    ("$lt", "LESS_THAN", ORD_OPERANDS, "value"),
    ("$lte", "LESS_THAN_OR_EQUAL", ORD_OPERANDS, "value"),
    ("$in", "IN", st.lists(scalars, max_size=3), "values"),
    ("$nin", "NOT_IN", st.lists(scalars, max_size=3), "values"),
    ("$contains", "CONTAINS", scalars_nn, "value"),
    ("$exists", None, st.booleans(), None),
]


@st.composite
def leaf_specs(draw: st.DrawFn) -> tuple[str, str, str | None, object, str | None]:
    d2, d3, operand_st, key = draw(st.sampled_from(LEAF_OPS))
    return draw(st.sampled_from(FIELDS)), d2, d3, draw(operand_st), key


def leaf2(spec: tuple) -> dict:
    fld, d2, _, operand, _ = spec
    return {fld: operand} if d2 == "$eq" and draw_plain(fld) else {fld: {d2: operand}}


def draw_plain(fld: str) -> bool:
    return fld != "b"  # use the bare {field: value} form for some fields


def leaf3(spec: tuple) -> dict:
    fld, d2, d3, operand, key = spec
    if d2 == "$exists":
        return {"field": "metadata." + fld, "op": "EXISTS" if operand else "not_exists"}
    return {"field": fld, "op": d3, key: operand}


filters2 = st.recursive(
    leaf_specs().map(leaf2),
    lambda inner: st.one_of(
        st.lists(inner, min_size=1, max_size=3).map(lambda fs: {"$and": fs}),
        st.lists(inner, min_size=1, max_size=3).map(lambda fs: {"$or": fs}),
        inner.map(lambda f: {"$not": f}),
        st.tuples(inner, leaf_specs()).map(lambda p: {**leaf2(p[1]), "$and": [p[0]]}),
    ),
    max_leaves=6,
)


@SLOW
@given(filters2, metadata)
def test_equality_terms_are_in_index_terms(f: dict, md: dict) -> None:
    flt = parse_filter(f)
    terms = flt.equality_terms()
    if terms and flt.matches(md):
        assert set(terms) <= set(index_terms(md))


@FAST
@given(st.lists(st.tuples(st.sampled_from(FIELDS), scalars), min_size=1, max_size=3), metadata)
def test_equality_only_filters_agree_with_index(pairs: list, md: dict) -> None:
    f = parse_filter({"$and": [{fld: v} for fld, v in pairs]})
    keys = set(index_terms(md))
    expected = all((fld, normalize_value(v)) in keys for fld, v in pairs)
    if "n.x" not in {fld for fld, _ in pairs}:  # 'n.x' may be shadowed by the literal key
        assert f.matches(md) is expected


@SLOW
@given(filters2, metadata)
def test_logic_laws(f: dict, md: dict) -> None:
    base = parse_filter(f).matches(md)
    assert parse_filter({"$not": f}).matches(md) is (not base)
    assert parse_filter({"$and": [f, {"$not": f}]}).matches(md) is False
    assert parse_filter({"$or": [f, {"$not": f}]}).matches(md) is True


@SLOW
@given(st.lists(filters2, min_size=1, max_size=3), metadata)
def test_and_or_are_all_any(fs: list, md: dict) -> None:
    parts = [parse_filter(f).matches(md) for f in fs]
    assert parse_filter({"$and": fs}).matches(md) is all(parts)
    assert parse_filter({"$or": fs}).matches(md) is any(parts)


@SLOW
@given(st.lists(leaf_specs(), min_size=1, max_size=4), st.booleans(), metadata)
def test_dialects_agree(specs: list, use_or: bool, md: dict) -> None:
    f2 = parse_filter({"$or" if use_or else "$and": [leaf2(s) for s in specs]})
    f3 = parse_filter(
        {"combination": "or" if use_or else "AND", "conditions": [leaf3(s) for s in specs]}
    )
    assert f2.matches(md) is f3.matches(md)
    assert f2.canonical == f3.canonical


def _reverse_keys(x: object) -> object:
    if isinstance(x, dict):
        return {k: _reverse_keys(v) for k, v in reversed(list(x.items()))}
    if isinstance(x, list):
        return [_reverse_keys(v) for v in x]
    return x


@SLOW
@given(filters2, metadata)
def test_canonical_ignores_key_order(f: dict, md: dict) -> None:
    a, b = parse_filter(f), parse_filter(_reverse_keys(f))
    assert a.canonical == b.canonical
    assert a.matches(md) is b.matches(md)
    assert (
        parse_filter({"$and": [f, {"a": 1}]}).canonical
        == parse_filter({"$and": [{"a": 1}, f]}).canonical
    )


@FAST
@given(scalars, scalars)
def test_eq_matches_iff_normalized_equal(x: object, y: object) -> None:
    assert m({"f": x}, {"f": y}) is (normalize_value(x) == normalize_value(y))
    assert m({"f": {"$in": [x]}}, {"f": y}) is m({"f": x}, {"f": y})
    assert m({"f.g": x}, {"f": {"g": y}}) is m({"f": x}, {"f": y})
