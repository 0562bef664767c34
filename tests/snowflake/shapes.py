"""A translation cache for the emulator (`emulator.py --translation-cache`).

fakesnow translates every statement from Snowflake SQL to DuckDB SQL by
running about 80 sqlglot rewrites over its syntax tree. For fleet-q's
statements that is most of the emulator's CPU time, and on a 2-core machine it,
not the modelled warehouse, limits a fleet bench. But fleet-q sends a few dozen
statement *shapes* that differ only in their literals (ids, tokens, times,
VALUES rows), so the rewrites can be done once per shape:

- A statement's shape is its text with every plain literal (a string without a
  backslash, an integer, a decimal) replaced by a sentinel of the same kind
  (`'fq_lit_3_x'`, `990000003`), keyed also by each literal's kind (a string
  that looks like a date or JSON is its own kind), so two statements share a
  shape only when a rewrite could not tell them apart by their literals' kinds.
- The first time a shape is seen, the sentinel text is parsed and rewritten,
  and the statement itself is rewritten as usual. The shape is cached only if
  putting the statement's literals back into the sentinel tree gives exactly
  the SQL the usual path produced; otherwise it is remembered as uncacheable
  and always takes the usual path.
- Later statements of a cached shape skip the rewrites: a copy of the cached
  tree gets their literals put back in place of the sentinels.

Only SELECT, INSERT, UPDATE, DELETE and MERGE are cached, never DDL or session
statements (their rewrites have side effects), and never statements with
bindings. What DuckDB runs is the same SQL the usual path would have run; the
statement is still parsed (fakesnow needs its tree to split a MERGE), so a
syntax error is still reported as before.
"""

import re
import threading

from sqlglot import exp

from fakesnow.cursor import FakeSnowflakeCursor
from fakesnow.dialect import parse_one

# A string literal ('' escapes a quote), a quoted identifier, a comment, or a
# number standing alone (not part of an identifier such as column1 or t2).
_TOKEN = re.compile(
    r"'(?:[^']|'')*'"
    r'|"(?:[^"]|"")*"'
    r"|--[^\n]*"
    r"|/\*.*?\*/"
    r"|(?<![\w.$])\d+(?:\.\d+)?(?![\w.$])",
    re.S,
)
_DATEISH = re.compile(r"^\d{4}-\d\d-\d\d")
_NUM_BASE = 990_000_000
_STR_SENTINEL = re.compile(r"^fq_lit_(\d+)_x$")
_CACHEABLE = (exp.Select, exp.Union, exp.Insert, exp.Update, exp.Delete, exp.Merge)
_UNCACHEABLE = object()

_cache: dict = {}
_local = threading.local()
stats = {"hits": 0, "misses": 0, "uncacheable": 0}


def shape(sql: str):
    """(shape key, literals): the key is the sentinel text plus the literals'
    kinds; each literal is (is_string, value) with a string's value unescaped."""
    out, lits, kinds, last = [], [], [], 0
    for m in _TOKEN.finditer(sql):
        tok = m.group(0)
        if tok[0] == "'":
            body = tok[1:-1]
            if "\\" in body:
                continue  # backslash escapes: left in the shape as they are
            value = body.replace("''", "'")
            kind = "d" if _DATEISH.match(value) else ("j" if value[:1] in "{[" else "s")
            sentinel = f"'fq_lit_{len(lits)}_x'"
            lits.append((True, value))
        elif tok[0].isdigit():
            kind = "f" if "." in tok else "i"
            sentinel = str(_NUM_BASE + len(lits))
            if kind == "f":
                sentinel += ".5"
            lits.append((False, tok))
        else:
            continue
        out.append(sql[last : m.start()])
        out.append(sentinel)
        kinds.append(kind)
        last = m.end()
    out.append(sql[last:])
    return "".join(out) + "\x00" + "".join(kinds), lits


def _put_back(tree: exp.Expression, lits) -> exp.Expression:
    """A copy of `tree` with each sentinel literal replaced by the real one."""
    tree = tree.copy()
    for node in tree.find_all(exp.Literal):
        v = node.this
        if node.is_string:
            m = _STR_SENTINEL.match(v)
            if m:
                i = int(m.group(1))
                if i < len(lits) and lits[i][0]:
                    node.set("this", lits[i][1])
        else:
            try:
                i = int(float(v)) - _NUM_BASE
            except (ValueError, OverflowError):
                continue
            if 0 <= i < len(lits) and not lits[i][0]:
                node.set("this", lits[i][1])
    return tree


def install() -> None:
    """Wraps fakesnow's cursor so translations are cached by shape."""
    orig_execute = FakeSnowflakeCursor.execute
    orig_transform = FakeSnowflakeCursor._transform

    def execute(self, command, params=None, *args, **kwargs):
        if params is not None or kwargs.get("binding_params") or "$" in command:
            return orig_execute(self, command, params, *args, **kwargs)
        outer = getattr(_local, "current", None)
        _local.current = (shape(command), [0])
        try:
            return orig_execute(self, command, params, *args, **kwargs)
        finally:
            _local.current = outer

    def _transform(self, expression, params):
        current = getattr(_local, "current", None)
        if current is None or params or not isinstance(expression, _CACHEABLE):
            return orig_transform(self, expression, params)
        (key, lits), part = current
        index = part[0]
        part[0] += 1
        ck = (key, index, self._conn.database, self._conn.schema)
        entry = _cache.get(ck)
        if entry is _UNCACHEABLE:
            stats["uncacheable"] += 1
            return orig_transform(self, expression, params)
        if entry is not None:
            stats["hits"] += 1
            return _put_back(entry, lits)
        stats["misses"] += 1
        real = orig_transform(self, expression, params)
        try:
            sentinel_sql = key.split("\x00", 1)[0]
            parts = self._transform_explode(parse_one(sentinel_sql))
            cached = orig_transform(self, parts[index], None)
            same = _put_back(cached, lits).sql(dialect="duckdb") == real.sql(dialect="duckdb")
        except Exception:
            same = False
        _cache[ck] = cached if same else _UNCACHEABLE
        return real

    FakeSnowflakeCursor.execute = execute
    FakeSnowflakeCursor._transform = _transform
