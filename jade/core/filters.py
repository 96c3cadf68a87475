r"""Metadata filters for search requests (API spec section 7.2).

What this module promises:

* ``parse_filter`` accepts the three filter dialects (equality map, operator map with
  ``$and/$or/$not``, condition list with ``combination``/``conditions``) and nothing else:
  every other shape raises ``FilterError`` (a ``ValueError``) whose message names the
  offending operator/field and its location, e.g. ``filters.$and[1].price``.
* ``None`` or ``{}`` parse to a filter that matches everything (``Filter.is_match_all``).
* Parsing compiles the filter once into nested closures with operands pre-coerced and
  regexes pre-compiled; ``Filter.matches`` does no parsing, regex compilation or JSON work.
* Values compare with coercion: numbers and numeric strings compare numerically (as floats),
  booleans and ``"true"/"false"`` (any case) compare as booleans, anything else compares as
  ``str``.  Ordering between incomparable kinds is simply no match.
* ``normalize_value``/``index_terms`` give inverted-index keys that agree with ``matches``:
  if ``f.matches(md)`` then every pair in ``f.equality_terms()`` is in ``index_terms(md)``.
* ``Filter.canonical`` is a JSON string of the normalised parse tree, identical for filters
  that differ only in key order, ``metadata.`` prefixes, op-name case or operand spelling
  that coerces to the same value (e.g. ``2`` vs ``"2"``); usable as a cache key.

Choices on points the spec leaves open: equality against a list field matches if any element
is equal (no whole-list repr equality) and a dict field never equals a scalar; a JSON null is
a present value that compares as ``"None"``; ordering also works between two non-numeric,
non-boolean strings (lexicographic); MATCHES_REGEX applies to strings and ``str()`` of other
scalars; in condition lists ``"value": null`` counts as missing; unknown keys in a
condition or condition group are errors, never silently ignored.

Bounds (a filter is user input evaluated against every stored vector): at most ``MAX_DEPTH``
levels of nesting and ``MAX_CONDITIONS`` conditions (each one is work per vector scanned), at most
``MAX_OPERAND_VALUES`` values in all ``$in``/``$nin``/``$all``/``IN``/``NOT_IN`` lists together,
and regexes of at most ``MAX_REGEX_LEN`` characters. MATCHES_REGEX uses RE2 (``google-re2``), not
Python's ``re``: RE2 matches in time linear in the text, never backtracks, and releases the GIL
while it matches, so no pattern can stall the server (``^(a+)+$`` took Python's ``re`` 2.5 s on 26
characters, x4 per two more, holding the GIL). What RE2 cannot do in linear time it refuses to
compile: backreferences (``\1``), lookaround (``(?=``, ``(?<=``), possessive and atomic groups;
such a pattern is a ``FilterError`` naming it. Other differences from ``re``: ``\w``, ``\d``,
``\s`` and ``\b`` are ASCII-only, ``$`` matches only at the very end (not before a final newline)
and ``\Z`` is spelled ``\z``.
"""

from __future__ import annotations

import json
import math
import operator
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import re2

__all__ = ["Filter", "FilterError", "index_terms", "normalize_value", "parse_filter"]

MAX_DEPTH = 64
MAX_REGEX_LEN = 1000
# Elasticsearch's old indices.query.bool.max_clause_count was 1024 too
MAX_CONDITIONS = 1024
MAX_OPERAND_VALUES = 100_000

Pred = Callable[[object], bool]
Test = Callable[[dict[str, Any]], bool]


class FilterError(ValueError):
    """The filter is malformed; the message says what is wrong and where."""


_MISSING = object()
# ---------------------------------------------------------------- value coercion

_NUM_START = frozenset("0123456789+-.")
_isfinite = math.isfinite


def _str_num(s: str) -> float | None:
    """Float value of a numeric string (ASCII ``[+-]digits[.digits][e[+-]digits]``, finite).

    ``float()`` also accepts whitespace, ``_``, non-ASCII digits, inf and nan; those are
    rejected so that e.g. ``" 2"`` and ``"nan"`` stay plain strings.
    """
    if not s or s[0] not in _NUM_START:
        return None
    try:
        f = float(s)
    except ValueError:
        return None
    if not _isfinite(f) or "_" in s or not s.isascii() or s[-1].isspace():
        return None
    return f


def _num_key(f: float) -> str:
    if f.is_integer() and -9.2e18 < f < 9.2e18:
        return f"n:{int(f)}"
    return "n:" + repr(f)


def _key(v: object) -> str | None:
    """Normalised comparison key of a scalar; None for containers (which equal nothing)."""
    if isinstance(v, str):
        if 4 <= len(v) <= 5:
            low = v.lower()
            if low == "true":
                return "b:true"
            if low == "false":
                return "b:false"
        f = _str_num(v)
        return "s:" + v if f is None else _num_key(f)
    if isinstance(v, bool):
        return "b:true" if v else "b:false"
    if isinstance(v, (int, float)):
        f = _num(v)
        return "s:" + str(v) if f is None else _num_key(f)
    if isinstance(v, (list, tuple, dict)):
        return None
    return "s:" + str(v)


def _skey(v: object) -> str:
    """``_key`` of a value already validated as a scalar."""
    k = _key(v)
    assert k is not None
    return k


def _num(v: object) -> float | None:
    """Numeric value under the coercion rules, or None if ``v`` is not a number."""
    if isinstance(v, str):
        return _str_num(v)
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return None
    try:
        f = float(v)
    except OverflowError:
        return None
    return f if _isfinite(f) else None


def normalize_value(value: object) -> str:
    """Inverted-index key of a metadata scalar: ``n:<number>``, ``b:true|false`` or ``s:<text>``.

    Two scalars are equal under the filter coercion rules iff their keys are equal.
    Containers get ``s:`` + their repr, but containers never satisfy an equality test.
    """
    k = _key(value)
    return k if k is not None else "s:" + repr(value)


def index_terms(metadata: dict[str, Any] | None) -> list[tuple[str, str]]:
    """All ``(field, normalize_value(v))`` pairs of a stored metadata dict.

    Scalar fields give one pair, list fields one pair per scalar element, and nested dicts
    are walked under dotted paths (``{"a": {"b": 1}}`` -> ``("a.b", "n:1")``).
    """
    out: dict[tuple[str, str], None] = {}
    if isinstance(metadata, dict):
        _collect(metadata, "", out, 0)
    return list(out)


def _collect(d: dict[str, Any], prefix: str, out: dict[tuple[str, str], None], depth: int) -> None:
    for k, v in d.items():
        path = prefix + str(k)
        if isinstance(v, dict):
            if depth < MAX_DEPTH:
                _collect(v, path + ".", out, depth + 1)
        elif isinstance(v, (list, tuple)):
            for e in v:
                ek = _key(e)
                if ek is not None:
                    out[(path, ek)] = None
        else:
            out[(path, _skey(v))] = None


def _lookup(d: dict[str, Any], path: str) -> object:
    """``d[path]`` if present, else walk dotted segments through nested dicts."""
    v = d.get(path, _MISSING)
    if v is not _MISSING:
        return v
    i = path.find(".")
    while i != -1:
        sub = d.get(path[:i], _MISSING)
        if isinstance(sub, dict):
            v = _lookup(sub, path[i + 1 :])
            if v is not _MISSING:
                return v
        i = path.find(".", i + 1)
    return _MISSING


# ---------------------------------------------------------------- compiled tree


def _dumps(obj: object) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


class _Node:
    __slots__ = ("kind", "test", "canon", "key", "children", "terms", "cost")

    def __init__(
        self,
        kind: str,
        test: Test,
        canon: list[Any],
        children: tuple[_Node, ...] = (),
        terms: tuple[tuple[str, str], ...] = (),
        cost: int = 1,
    ) -> None:
        self.kind, self.test, self.canon, self.children = kind, test, canon, children
        self.terms, self.cost, self.key = terms, cost, _dumps(canon)


_ALL = _Node("all", lambda md: True, ["all"], cost=0)


def _combine(kind: str, nodes: list[_Node]) -> _Node:
    flat: dict[str, _Node] = {}
    for n in nodes:
        if n.kind == "all":
            if kind == "or":
                return _ALL
            continue
        for c in n.children if n.kind == kind else (n,):
            flat.setdefault(c.key, c)
    if not flat:
        return _ALL
    if len(flat) == 1:
        return next(iter(flat.values()))
    kids = tuple(sorted(flat.values(), key=lambda n: n.key))
    tests = tuple(c.test for c in sorted(kids, key=lambda n: n.cost))
    if kind == "and":

        def test(md: dict[str, Any]) -> bool:
            for t in tests:
                if not t(md):
                    return False
            return True

        terms = tuple(t for c in kids for t in c.terms)
    else:

        def test(md: dict[str, Any]) -> bool:
            for t in tests:
                if t(md):
                    return True
            return False

        terms = ()
    return _Node(
        kind, test, [kind, [c.canon for c in kids]], kids, terms, sum(c.cost for c in kids)
    )


def _not(n: _Node) -> _Node:
    t = n.test
    return _Node("not", lambda md: not t(md), ["not", n.canon], cost=n.cost)


def _leaf(
    op: str,
    fld: str,
    pred: Pred,
    on_missing: bool,
    operand: object,
    cost: int = 1,
    terms: tuple[tuple[str, str], ...] = (),
    test: Test | None = None,
) -> _Node:
    """Leaf node; ``test`` is an optional hand-inlined fast version for undotted fields."""
    if "." in fld:

        def test(md: dict[str, Any]) -> bool:
            v = _lookup(md, fld)
            return on_missing if v is _MISSING else pred(v)
    elif test is None:

        def test(md: dict[str, Any]) -> bool:
            v = md.get(fld, _MISSING)
            return on_missing if v is _MISSING else pred(v)

    return _Node("leaf", test, [op, fld, operand], terms=terms, cost=cost)


def _scalar_eq(k: str) -> Pred:
    """Equality of a scalar against the operand with key ``k`` (containers never equal)."""
    kind, text = k[0], k[2:]
    if kind == "s":
        return lambda v: v == text if v.__class__ is str else _key(v) == k
    if kind == "b":
        want = text == "true"
        return lambda v: (
            v is want if v.__class__ is bool else (isinstance(v, str) and v.lower() == text)
        )
    f = float(text)
    return lambda v: _num(v) == f


def _eq_leaf(op: str, fld: str, k: str) -> _Node:
    scalar = _scalar_eq(k)
    want = op == "eq"

    def pred(v: object) -> bool:
        if isinstance(v, (list, tuple)):
            return any(map(scalar, v)) is want
        return scalar(v) is want

    kind, text = k[0], k[2:]
    fast: Test | None = None
    if kind == "s":

        def fast(md: dict[str, Any]) -> bool:
            v = md.get(fld, _MISSING)
            if v.__class__ is str:
                return (v == text) is want
            return (not want) if v is _MISSING else pred(v)
    elif kind == "n":
        f = float(text)

        def fast(md: dict[str, Any]) -> bool:
            v = md.get(fld, _MISSING)
            if v.__class__ is str:
                return (_str_num(v) == f) is want
            return (not want) if v is _MISSING else pred(v)

    return _leaf(op, fld, pred, not want, k, terms=((fld, k),) if want else (), test=fast)


def _negate(p: Pred) -> Pred:
    return lambda v: not p(v)


_ORDER: dict[str, Callable[[Any, Any], bool]] = {
    "gt": operator.gt, "gte": operator.ge, "lt": operator.lt, "lte": operator.le
}


def _order_leaf(op: str, fld: str, operand: object) -> _Node:
    cmp, k = _ORDER[op], _skey(operand)
    fast: Test | None = None
    if k.startswith("n:"):
        f = float(k[2:])

        def pred(v: object) -> bool:
            if v.__class__ is int:  # exact int/float comparison, no overflow
                return cmp(v, f)
            x = _num(v)
            return x is not None and cmp(x, f)

        def fast(md: dict[str, Any]) -> bool:
            v = md.get(fld, _MISSING)
            if v.__class__ is str:
                x = _str_num(v)
                return x is not None and cmp(x, f)
            return v is not _MISSING and pred(v)
    elif k.startswith("s:"):
        s = k[2:]

        def pred(v: object) -> bool:
            return isinstance(v, str) and _key(v) == "s:" + v and cmp(v, s)
    else:

        def pred(v: object) -> bool:  # booleans have no order
            return False

    return _leaf(op, fld, pred, False, k, test=fast)


def _build(op: str, fld: str, operand: object, where: str) -> _Node:
    """Leaf for canonical op name ``op`` (operand already type-checked by the caller)."""
    if op in ("eq", "ne"):
        return _eq_leaf(op, fld, _skey(operand))
    if op in _ORDER:
        return _order_leaf(op, fld, operand)
    if op in ("in", "nin", "all"):
        items = operand if isinstance(operand, (list, tuple)) else ()
        ks = frozenset(_skey(e) for e in items)
        canon = sorted(ks)
        if op == "all":
            return _leaf(
                "all",
                fld,
                lambda v: isinstance(v, (list, tuple)) and ks <= set(map(_key, v)),
                False,
                canon,
                cost=2,
            )
        texts = frozenset(x[2:] for x in ks if x.startswith("s:"))
        only_text = len(texts) == len(ks)
        want = op == "in"

        def p_in(v: object) -> bool:
            if v.__class__ is str:
                if v in texts:
                    return want
                return (not want) if only_text else (_key(v) in ks) is want
            if isinstance(v, (list, tuple)):
                return (not ks.isdisjoint(map(_key, v))) is want
            return (_key(v) in ks) is want

        return _leaf(op, fld, p_in, not want, canon)
    if op in ("contains", "ncontains"):
        k, s = _skey(operand), str(operand)

        def p_con(v: object) -> bool:
            if isinstance(v, str):
                return s in v
            if isinstance(v, (list, tuple)):
                return any(_key(e) == k for e in v)
            return False

        neg = op == "ncontains"
        return _leaf(op, fld, _negate(p_con) if neg else p_con, neg, [k, s], cost=2)
    if op == "exists":
        want = bool(operand)
        return _leaf("exists", fld, lambda v: want, not want, want, cost=0)
    if op == "regex":
        pattern = str(operand)
        if len(pattern) > MAX_REGEX_LEN:
            raise FilterError(f"regex at {where} is longer than {MAX_REGEX_LEN} characters")
        search = _compile_regex(pattern, where)

        def p_rx(v: object) -> bool:
            if isinstance(v, str):
                return search(v)
            if isinstance(v, (list, tuple, dict)):
                return False
            return search(str(v))

        return _leaf("regex", fld, p_rx, False, pattern, cost=3)
    raise AssertionError(op)  # pragma: no cover


def _re2_options() -> Any:
    opts = re2.Options()
    opts.never_capture = True  # only "does it match": RE2 can answer with its DFA alone
    opts.log_errors = False  # a bad pattern is the caller's error, not a line on stderr
    return opts


_RE2_OPTIONS = _re2_options()
_UNANCHORED = getattr(getattr(re2, "_Anchor", None), "UNANCHORED", None)


def _compile_regex(pattern: str, where: str) -> Callable[[str], bool]:
    """``text -> does pattern match somewhere in it`` with RE2 (linear time), or a
    ``FilterError`` naming the pattern when RE2 cannot compile it."""
    try:
        rx = re2.compile(pattern, _RE2_OPTIONS)
    except re2.error as e:
        reason = e.args[0] if e.args else ""
        if isinstance(reason, bytes):
            reason = reason.decode(errors="replace")
        raise FilterError(
            f"invalid regex {pattern!r} at {where}: {reason or 'not valid'}; MATCHES_REGEX "
            "uses RE2 syntax, which matches in linear time and so has no backreferences, "
            "lookaround, possessive or atomic groups"
        ) from None
    # re2's own ``search`` converts byte offsets back to str offsets (~5 us a call); the bound
    # C++ ``Match`` it calls (and which releases the GIL while it runs) is all a yes/no needs
    # (~0.8 us). google-re2 is pinned exactly; without that hook, the public ``search``.
    match = getattr(getattr(rx, "_regexp", None), "Match", None)
    if match is None or _UNANCHORED is None:
        search = rx.search
        return lambda text: search(text) is not None
    anchor = _UNANCHORED

    def found(text: str) -> bool:
        b = text.encode("utf-8", "surrogatepass")
        return bool(match(anchor, b, 0, len(b))[0][0] != -1)

    return found


# ---------------------------------------------------------------- parsing


def _jtype(x: object) -> str:
    if x is None:
        return "null"
    if isinstance(x, bool):
        return "boolean"
    if isinstance(x, (int, float)):
        return "number"
    if isinstance(x, str):
        return "string"
    if isinstance(x, (list, tuple)):
        return "array"
    if isinstance(x, dict):
        return "object"
    return type(x).__name__


def _is_scalar(x: object) -> bool:
    return x is None or isinstance(x, (str, int, float))


def _check_operand(op: str, x: object, name: str, where: str) -> object:
    """Validate the operand of canonical op ``op``; ``name`` is the user-facing op name."""
    if op in ("in", "nin", "all"):
        if not isinstance(x, (list, tuple)):
            raise FilterError(f"{name} at {where} needs an array operand, got {_jtype(x)}")
        for i, e in enumerate(x):
            if not _is_scalar(e):
                raise FilterError(
                    f"{name} at {where}: element {i} must be a scalar, got {_jtype(e)}"
                )
        return x
    if op == "exists":
        if not isinstance(x, bool):
            raise FilterError(f"{name} at {where} needs a boolean operand, got {_jtype(x)}")
        return x
    if op == "regex":
        if not isinstance(x, str):
            raise FilterError(f"{name} at {where} needs a string pattern, got {_jtype(x)}")
        return x
    if op in _ORDER and (x is None or isinstance(x, bool)):
        raise FilterError(f"{name} at {where} needs a number or string operand, got {_jtype(x)}")
    if not _is_scalar(x):
        raise FilterError(f"{name} at {where} needs a scalar operand, got {_jtype(x)}")
    return x


def _field(name: object, where: str) -> str:
    if not isinstance(name, str):
        raise FilterError(f"field name at {where} must be a string, got {_jtype(name)}")
    if name.startswith("metadata."):
        name = name[len("metadata.") :]
    if not name:
        raise FilterError(f"empty field name at {where}")
    return name


_DOLLAR_OPS = {
    "$eq": "eq",
    "$ne": "ne",
    "$gt": "gt",
    "$gte": "gte",
    "$lt": "lt",
    "$lte": "lte",
    "$in": "in",
    "$nin": "nin",
    "$contains": "contains",
    "$all": "all",
    "$exists": "exists",
}
_LIST_OPS = {
    "EQUALS": "eq",
    "NOT_EQUALS": "ne",
    "GREATER_THAN": "gt",
    "GREATER_THAN_OR_EQUAL": "gte",
    "LESS_THAN": "lt",
    "LESS_THAN_OR_EQUAL": "lte",
    "CONTAINS": "contains",
    "NOT_CONTAINS": "ncontains",
    "IN": "in",
    "NOT_IN": "nin",
    "EXISTS": "exists",
    "NOT_EXISTS": "exists",
    "MATCHES_REGEX": "regex",
}


class _Budget:
    """What one filter may still hold: conditions and list operand values (``MAX_...``)."""

    __slots__ = ("conditions", "values")

    def __init__(self) -> None:
        self.conditions = 0
        self.values = 0

    def leaf(self, operand: object, where: str) -> None:
        self.conditions += 1
        if self.conditions > MAX_CONDITIONS:
            raise FilterError(
                f"filter has more than {MAX_CONDITIONS} conditions (at {where}); each one is "
                "evaluated against every vector scanned"
            )
        if isinstance(operand, (list, tuple)):
            self.values += len(operand)
            if self.values > MAX_OPERAND_VALUES:
                raise FilterError(
                    f"filter lists hold more than {MAX_OPERAND_VALUES} values in all "
                    f"(at {where})"
                )


def _parse_any(obj: object, depth: int, where: str, budget: _Budget) -> _Node:
    if depth > MAX_DEPTH:
        raise FilterError(f"filter nested deeper than {MAX_DEPTH} levels at {where}")
    if not isinstance(obj, dict):
        raise FilterError(f"filter at {where} must be an object, got {_jtype(obj)}")
    if isinstance(obj.get("conditions"), list):
        return _parse_group(obj, depth, where, budget)
    return _parse_map(obj, depth, where, budget)


def _parse_map(obj: dict[str, Any], depth: int, where: str, budget: _Budget) -> _Node:
    nodes: list[_Node] = []
    for key, val in obj.items():
        here = f"{where}.{key}"
        if not isinstance(key, str):
            raise FilterError(f"filter key {key!r} at {where} must be a string")
        if key in ("$and", "$or"):
            if not isinstance(val, (list, tuple)):
                raise FilterError(f"{key} at {where} needs an array of filters, got {_jtype(val)}")
            if not val:
                raise FilterError(f"{key} at {where} must not be empty")
            subs = [_parse_any(s, depth + 1, f"{here}[{i}]", budget) for i, s in enumerate(val)]
            nodes.append(_combine(key[1:], subs))
        elif key == "$not":
            if not isinstance(val, dict):
                raise FilterError(f"$not at {where} needs a filter object, got {_jtype(val)}")
            nodes.append(_not(_parse_any(val, depth + 1, here, budget)))
        elif key.startswith("$"):
            raise FilterError(
                f"unknown operator {key!r} at {where}; expected a field name or $and, $or, $not"
            )
        else:
            fld = _field(key, where)
            if isinstance(val, dict):
                if not val:
                    raise FilterError(f"empty operator object for field {key!r} at {where}")
                bad = [k for k in val if not (isinstance(k, str) and k.startswith("$"))]
                if bad:
                    raise FilterError(
                        f"field {key!r} at {where} has an object value with "
                        f"non-operator key {bad[0]!r}; nested-object equality "
                        "is not supported"
                    )
                for op, operand in val.items():
                    canon_op = _DOLLAR_OPS.get(op)
                    if canon_op is None:
                        raise FilterError(
                            f"unknown operator {op!r} for field {key!r} at "
                            f"{where}; expected one of {', '.join(_DOLLAR_OPS)}"
                        )
                    operand = _check_operand(canon_op, operand, op, f"{here}.{op}")
                    budget.leaf(operand, f"{here}.{op}")
                    nodes.append(_build(canon_op, fld, operand, f"{here}.{op}"))
            else:
                operand = _check_operand("eq", val, "equality value", here)
                budget.leaf(operand, here)
                nodes.append(_build("eq", fld, operand, here))
    return _combine("and", nodes)


def _parse_group(obj: dict[str, Any], depth: int, where: str, budget: _Budget) -> _Node:
    extra = [k for k in obj if k not in ("combination", "conditions")]
    if extra:
        raise FilterError(f"unexpected key {extra[0]!r} in condition group at {where}")
    comb = obj.get("combination", "AND")
    if not isinstance(comb, str) or comb.upper() not in ("AND", "OR"):
        raise FilterError(f"combination at {where} must be 'AND' or 'OR', got {comb!r}")
    conds = obj["conditions"]
    if not conds:
        raise FilterError(f"conditions at {where} must not be empty")
    nodes = []
    for i, c in enumerate(conds):
        here = f"{where}.conditions[{i}]"
        if isinstance(c, dict) and "conditions" in c:
            if not isinstance(c["conditions"], list):
                raise FilterError(f"conditions at {here} must be an array")
            if depth + 1 > MAX_DEPTH:
                raise FilterError(f"filter nested deeper than {MAX_DEPTH} levels at {here}")
            nodes.append(_parse_group(c, depth + 1, here, budget))
        else:
            nodes.append(_parse_condition(c, here, budget))
    return _combine(comb.lower(), nodes)


def _parse_condition(c: object, where: str, budget: _Budget) -> _Node:
    if not isinstance(c, dict):
        raise FilterError(f"condition at {where} must be an object, got {_jtype(c)}")
    extra = [k for k in c if k not in ("field", "op", "value", "values")]
    if extra:
        raise FilterError(f"unexpected key {extra[0]!r} in condition at {where}")
    if "field" not in c:
        raise FilterError(f"condition at {where} is missing 'field'")
    if "op" not in c:
        raise FilterError(f"condition at {where} is missing 'op'")
    fld, op_name = _field(c["field"], where), c["op"]
    if not isinstance(op_name, str) or op_name.upper() not in _LIST_OPS:
        raise FilterError(
            f"unknown op {op_name!r} in condition at {where}; expected one of "
            f"{', '.join(_LIST_OPS)}"
        )
    op_name = op_name.upper()
    op = _LIST_OPS[op_name]
    if op == "exists":
        operand: object = op_name == "EXISTS"
    elif op in ("in", "nin"):
        if c.get("values") is None:
            raise FilterError(f"{op_name} condition at {where} is missing 'values'")
        operand = _check_operand(op, c["values"], f"{op_name} 'values'", where)
    else:
        if c.get("value") is None:
            raise FilterError(f"{op_name} condition at {where} is missing 'value'")
        operand = _check_operand(op, c["value"], f"{op_name} 'value'", where)
    budget.leaf(operand, where)
    return _build(op, fld, operand, where)


# ---------------------------------------------------------------- public API


@dataclass(frozen=True, slots=True)
class Filter:
    """A compiled filter. Equality/hash use ``canonical``."""

    is_match_all: bool
    canonical: str
    _test: Test = field(repr=False, compare=False)
    _terms: tuple[tuple[str, str], ...] = field(repr=False, compare=False, default=())

    def matches(self, metadata: dict[str, Any] | None) -> bool:
        """True if ``metadata`` (None counts as ``{}``) satisfies the filter."""
        if not isinstance(metadata, dict):
            metadata = {}
        return self._test(metadata)

    def equality_terms(self) -> list[tuple[str, str]] | None:
        """``(field, normalize_value(v))`` pairs every matching record must have (via the
        top-level AND of ``$eq``/``EQUALS`` leaves); None when there are none."""
        return list(self._terms) or None


def parse_filter(obj: object) -> Filter:
    """Parse and compile a search request's ``filters`` value (any of the three dialects)."""
    node = _ALL if obj is None else _parse_any(obj, 0, "filters", _Budget())
    terms = tuple(sorted(set(node.terms)))
    return Filter(node.kind == "all", node.key, node.test, terms)
