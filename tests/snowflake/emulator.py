"""A local Snowflake protocol peer for fleet-q's tests: fakesnow's server, with
the compatibility fixes the Rust client (snowflake-api 0.14) needs, applied at the
HTTP boundary so the client runs exactly the production code path.

    python emulator.py --port PORT [--db-path DIR]

Fixes (all here, none in fleet-q's src/):
- login replies lack sessionId, masterToken, validityInSeconds,
  masterValidityInSeconds and sessionInfo.roleName: added;
- query replies lack returned, finalRoleName and version: added;
- error replies lack parts of `data` (errorCode, age, internalError, queryId,
  sqlState), and internal failures come back as plain-text HTTP 500: every error
  becomes Snowflake's JSON error shape;
- concurrency is Snowflake's, not DuckDB's (where a second writer fails at once):
  SELECTs and INSERTs run concurrently, each on its session's own snapshot;
  UPDATE, DELETE and MERGE queue behind a lock on their target table (an INSERT
  never waits for it, as on Snowflake); DDL runs alone. When 20 statements already
  wait for a table's lock, a newcomer is aborted with Snowflake's error 000625.
  `--insert-commit-delay-ms` holds each INSERT's transaction open that long after
  it ran, so two INSERTs whose snapshots overlap both miss each other's rows, as
  two concurrent Snowflake INSERTs do (Snowflake enforces no UNIQUE constraint).

Strictness (forms Snowflake rejects that DuckDB would run):
- `LIMIT`/`FETCH` inside an `IN (subquery)`: Snowflake allows a limit only in an
  uncorrelated scalar subquery and answers 002031 "Unsupported subquery type
  cannot be evaluated"; so does this emulator.

Result chunks: `--chunk-rows N [--inline-rows M]` splits an Arrow result of more
than max(M, N) rows as Snowflake does: M rows inline (`returned` = M, possibly 0:
snowflake-api 0.14 then answers "no rows"), the rest in chunks of N rows the
client downloads from `/chunks/{id}` (`chunks`, `chunkHeaders`).

Latency: `--compile-ms MEAN[:JITTER]` and `--latency-ms MEAN[:JITTER]` make
every statement spend a compile time, then take at least an execution time
(uniform in MEAN ± JITTER ms; the statement runs in DuckDB, then sleeps the rest
in asyncio, so waiting statements stay concurrent); an UPDATE, DELETE or MERGE
holds its table's lock while executing, so DML on one table runs one statement
at a time and queues. `GET /debug/stats` reports how long each table's lock was
held (`lock_held_s`) and the process's CPU seconds (`cpu_s`).

Slow statements: `--delay-statement REGEX=MS[:COUNT]` holds the next COUNT
statements matching REGEX for MS before running them; a session whose
STATEMENT_TIMEOUT_IN_SECONDS is shorter gets 000630 at that timeout instead and
the statement never runs (Snowflake cancels it); without one it runs late, after
its client may have given up. `GET /debug/delayed` reports how many are held.

Fault injection: `--max-statement-bytes N` refuses longer statements with a
compile error (001003), standing in for any row the server refuses (Snowflake
itself runs statements over its advised 1 MB).

Session parameters: `ALTER SESSION SET k = v, …` is answered here (fakesnow
knows only AUTOCOMMIT): AUTOCOMMIT is applied, LOCK_TIMEOUT bounds the wait for a
table lock (then 000625), the others are recorded; `SHOW PARAMETERS [LIKE …] IN
SESSION` lists them (key, value, level). An unknown parameter is refused with
001008, as Snowflake refuses it.

Session defaults an administrator may have set: `--default-autocommit false` logs
every session in with AUTOCOMMIT off unless the client sets it (as a user whose
default is `AUTOCOMMIT = FALSE`): its writes are rolled back when the session ends
unless committed.
fleet-q never selects a raw timestamp (it reads epoch milliseconds), so the
emulator's NULL-timestamp Arrow encoding does not matter.

Key-pair sign-in is verified as Snowflake does it: `--rsa-public-key USER=PEM`
registers a user's public key (Snowflake: `ALTER USER … SET RSA_PUBLIC_KEY`); a
login with `AUTHENTICATOR: SNOWFLAKE_JWT` must carry an RS256 JWT signed by that
key, with `sub` = `ACCOUNT.USER`, `iss` = `ACCOUNT.USER.SHA256:<fingerprint of the
registered key>`, and `exp` in the future; anything else is refused with error
390144 ("JWT token is invalid"). Password logins are accepted as fakesnow does.
"""

import argparse
import asyncio
import base64
import gzip
import hashlib
import importlib
import json
import logging
import os
import random
import re
import time

import uvicorn
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

# `fakesnow.server` is also a function exported by the package: import the module.
fs = importlib.import_module("fakesnow.server")

from sqlglot import exp

from fakesnow.dialect import parse_one

# Tuned from the command line in main().
INSERT_COMMIT_DELAY = 0.0
DEFAULT_AUTOCOMMIT = None
LOCK_WAITERS_LIMIT = 20
MAX_STATEMENT_BYTES = 0
# Result chunking: an Arrow result with more than INLINE_ROWS rows keeps that many
# inline and serves the rest as chunks of CHUNK_ROWS rows (0: never chunk).
INLINE_ROWS = 0
CHUNK_ROWS = 0
CHUNKS: dict = {}
# Statement delays: [pattern, seconds, remaining count]; DELAYED counts those in
# progress (GET /debug/delayed).
DELAYS: list = []
DELAYED = 0
# Modelled statement latency, seconds: mean and +/- jitter. COMPILE is spent
# before a statement queues for its table lock; LATENCY (execution) is spent
# holding it (DML) or not (reads, INSERTs).
LATENCY = (0.0, 0.0)
COMPILE = (0.0, 0.0)
# What ran, for GET /debug/stats: statements by kind and outcome, lock-wait
# aborts, and the arrival time (Unix s) of the most recent statements.
STATS: dict = {"statements": 0, "by_kind": {}, "lock_aborts": 0, "errors": 0}
ARRIVALS: list = []
ARRIVALS_KEPT = 200_000
CHUNK_IDS = iter(range(1, 1 << 62))


class RWLock:
    """Shared for statements that may run together, exclusive for DDL. A waiting
    DDL statement holds back new shared holders, so a busy fleet cannot starve a
    starting pod's schema statements."""

    def __init__(self) -> None:
        self._readers = 0
        self._writer = False
        self._writers_waiting = 0
        self._cond = asyncio.Condition()

    async def acquire(self, exclusive: bool) -> None:
        async with self._cond:
            if exclusive:
                self._writers_waiting += 1
                try:
                    await self._cond.wait_for(lambda: not self._writer and self._readers == 0)
                finally:
                    self._writers_waiting -= 1
                self._writer = True
            else:
                await self._cond.wait_for(lambda: not self._writer and self._writers_waiting == 0)
                self._readers += 1

    async def release(self, exclusive: bool) -> None:
        async with self._cond:
            if exclusive:
                self._writer = False
            else:
                self._readers -= 1
            self._cond.notify_all()


CATALOG = RWLock()
# Table name (upper case) -> its DML lock and how many statements wait for it.
TABLE_LOCKS: dict = {}
TABLE_WAITERS: dict = {}
MAX_WAITERS = 0
LOCK_HELD_S: dict = {}
# USER (upper case) -> the registered RSA public key (PEM bytes).
RSA_KEYS: dict = {}
SESSION_IDS = iter(range(1, 1 << 62))


def _body(resp) -> dict:
    try:
        return json.loads(resp.body)
    except Exception:
        return {}


def _error(code: str, message: str, sql_state: str = "XX000") -> JSONResponse:
    return JSONResponse(
        {
            "data": {
                "errorCode": code,
                "age": 0,
                "internalError": False,
                "queryId": "00000000-0000-0000-0000-000000000000",
                "sqlState": sql_state,
                "line": None,
                "pos": None,
            },
            "code": code,
            "message": message,
            "success": False,
        }
    )


def _jwt_problem(data: dict):
    """Why a SNOWFLAKE_JWT login must be refused, or None when it is valid."""
    import jwt  # PyJWT, a dependency of snowflake-connector-python
    from cryptography.hazmat.primitives import serialization

    user = str(data.get("LOGIN_NAME") or "").upper()
    account = str(data.get("ACCOUNT_NAME") or "").upper()
    pem = RSA_KEYS.get(user)
    if pem is None:
        return f"no RSA public key is registered for user {user}"
    key = serialization.load_pem_public_key(pem)
    der = key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    fingerprint = "SHA256:" + base64.b64encode(hashlib.sha256(der).digest()).decode()
    try:
        claims = jwt.decode(
            str(data.get("TOKEN") or ""),
            key,
            algorithms=["RS256"],
            options={"require": ["exp", "iat", "iss", "sub"]},
        )
    except Exception as e:  # bad signature, expired, malformed
        return f"signature or claims rejected: {e}"
    ident = f"{account}.{user}"
    if str(claims["sub"]).upper() != ident:
        return f"sub {claims['sub']!r} is not {ident}"
    iss_ident, _, iss_fp = str(claims["iss"]).rpartition(".SHA256:")
    if iss_ident.upper() != ident or "SHA256:" + iss_fp != fingerprint:
        return "iss does not name the registered key's fingerprint"
    return None


async def _raw_body(request: Request) -> bytes:
    """The request body, gunzipped when it was compressed."""
    raw = await request.body()
    try:
        return gzip.decompress(raw)
    except OSError:
        return raw


async def _login_data(request: Request) -> dict:
    try:
        return json.loads(await _raw_body(request)).get("data") or {}
    except Exception:
        return {}


async def login(request: Request) -> JSONResponse:
    data = await _login_data(request)
    if DEFAULT_AUTOCOMMIT is not None:
        params = data.setdefault("SESSION_PARAMETERS", {})
        params.setdefault("AUTOCOMMIT", DEFAULT_AUTOCOMMIT)
        body = json.dumps({"data": data}).encode()
        if request.headers.get("Content-Encoding") == "gzip":
            body = gzip.compress(body)
        request._body = body
    if str(data.get("AUTHENTICATOR") or "").upper() == "SNOWFLAKE_JWT":
        problem = _jwt_problem(data)
        if problem is not None:
            return _error("390144", f"JWT token is invalid: {problem}")
    resp = await fs.login_request(request)
    body = _body(resp)
    data = body.get("data") or {}
    if body.get("success"):
        data.setdefault("sessionId", next(SESSION_IDS))
        data.setdefault("masterToken", "master-" + data.get("token", ""))
        data.setdefault("validityInSeconds", 3600)
        data.setdefault("masterValidityInSeconds", 14400)
        info = data.setdefault("sessionInfo", {})
        info.setdefault("roleName", "SYSADMIN")
        info.setdefault("warehouseName", "COMPUTE_WH")
        return JSONResponse(body)
    return _error(str((data or {}).get("errorCode") or "390100"), body.get("message") or "login failed")


# Session token -> {PARAMETER: value as text}.
SESSION_PARAMS: dict = {}
KNOWN_PARAMS = {
    "AUTOCOMMIT",
    "TIMEZONE",
    "TIMESTAMP_INPUT_FORMAT",
    "TIMESTAMP_TYPE_MAPPING",
    "TIMESTAMP_OUTPUT_FORMAT",
    "QUOTED_IDENTIFIERS_IGNORE_CASE",
    "STATEMENT_TIMEOUT_IN_SECONDS",
    "STATEMENT_QUEUED_TIMEOUT_IN_SECONDS",
    "LOCK_TIMEOUT",
    "QUERY_TAG",
    "ABORT_DETACHED_QUERY",
}
ALTER_SESSION = re.compile(r"^\s*ALTER\s+SESSION\s+SET\s+(.*?)\s*;?\s*$", re.I | re.S)
SHOW_PARAMS = re.compile(r"^\s*SHOW\s+PARAMETERS(?:\s+LIKE\s+'([^']*)')?\s+IN\s+SESSION\s*;?\s*$", re.I)
PARAM_ITEM = re.compile(r"\s*(\w+)\s*=\s*('(?:[^']|'')*'|[^,\s]+)\s*(?:,|$)")


def _rewrite(request: Request, raw: bytes, sql_text: str) -> None:
    """Makes the request carry `sql_text` instead of its statement."""
    body = json.loads(raw)
    body["sqlText"] = sql_text
    new = json.dumps(body).encode()
    if request.headers.get("Content-Encoding") == "gzip":
        new = gzip.compress(new)
    request._body = new


def _lit(v: str) -> str:
    return "'" + v.replace("'", "''") + "'"


async def _session_statement(request: Request, raw: bytes, sql_text: str, conn, token):
    """Answers ALTER SESSION SET and SHOW PARAMETERS IN SESSION; None for others."""
    params = SESSION_PARAMS.setdefault(token, {})
    m = ALTER_SESSION.match(sql_text)
    if m:
        items, rest = [], m.group(1)
        while rest:
            im = PARAM_ITEM.match(rest)
            if not im:
                return _error("001003", f"SQL compilation error: syntax error near '{rest[:20]}'", sql_state="42000")
            items.append((im.group(1).upper(), im.group(2)))
            rest = rest[im.end():]
        for name, _ in items:
            if name not in KNOWN_PARAMS:
                return _error("001008", f"invalid parameter '{name}'", sql_state="22023")
        for name, value in items:
            value = value[1:-1].replace("''", "'") if value.startswith("'") else value.upper()
            params[name] = value
            if name == "AUTOCOMMIT" and conn is not None:
                await run_in_threadpool(conn.autocommit, value == "TRUE")
        _rewrite(request, raw, "SELECT 'Statement executed successfully.' AS \"status\"")
        return await fs.query_request(request)
    m = SHOW_PARAMS.match(sql_text)
    if m:
        shown = dict(params)
        if "AUTOCOMMIT" not in shown:
            shown["AUTOCOMMIT"] = "TRUE" if conn is None or conn._autocommit else "FALSE"
        like = re.compile("^" + re.escape(m.group(1) or "%").replace("%", ".*").replace("_", ".") + "$", re.I)
        rows = [
            f"({_lit(k)}, {_lit(v)}, 'SESSION')"
            for k, v in sorted(shown.items())
            if like.match(k)
        ]
        if not rows:
            rows = ["(NULL, NULL, NULL)"]
            where = " WHERE \"key\" IS NOT NULL"
        else:
            where = ""
        _rewrite(
            request,
            raw,
            f"SELECT * FROM (VALUES {', '.join(rows)}) AS t(\"key\", \"value\", \"level\"){where}",
        )
        return await fs.query_request(request)
    return None


def _classify(sql_text: str):
    """(kind, table, problem): kind is read, insert, dml or ddl; problem is a
    Snowflake compile error for a form Snowflake rejects, or None."""
    try:
        e = parse_one(sql_text)
    except Exception:
        return "ddl", None, None
    for node in e.find_all(exp.In):
        q = node.args.get("query")
        if q is not None and q.find(exp.Limit, exp.Fetch) is not None:
            return "ddl", None, ("002031", "SQL compilation error:\nUnsupported subquery type cannot be evaluated")
    if isinstance(e, (exp.Select, exp.Union, exp.Describe, exp.Show)):
        return "read", None, None
    target = e.this
    if isinstance(target, exp.Schema):
        target = target.this
    name = target.name.upper() if isinstance(target, exp.Table) else None
    if isinstance(e, exp.Insert):
        return "insert", name, None
    if isinstance(e, (exp.Update, exp.Delete, exp.Merge)) and name:
        return "dml", name, None
    return "ddl", None, None


async def _run(request: Request, conn, kind: str):
    """Runs the statement; an INSERT in an autocommit session keeps its
    transaction open for INSERT_COMMIT_DELAY after it ran."""
    hold = kind == "insert" and INSERT_COMMIT_DELAY > 0 and conn is not None and conn._autocommit
    if not hold:
        return await fs.query_request(request)
    await run_in_threadpool(conn._duck_conn.begin)
    try:
        resp = await fs.query_request(request)
    except BaseException:
        await run_in_threadpool(conn._duck_conn.rollback)
        raise
    if _body(resp).get("success"):
        await asyncio.sleep(INSERT_COMMIT_DELAY)
        await run_in_threadpool(conn._duck_conn.commit)
    else:
        await run_in_threadpool(conn._duck_conn.rollback)
    return resp


async def query(request: Request) -> JSONResponse:
    raw = await _raw_body(request)
    try:
        sql_text = json.loads(raw).get("sqlText") or ""
    except Exception:
        sql_text = ""
    try:
        token = fs.to_token(request)
        conn = fs.to_conn(token)
    except Exception:
        token, conn = None, None
    if conn is not None:
        resp = await _session_statement(request, raw, sql_text, conn, token)
        if resp is not None:
            return _answer(resp)
    if MAX_STATEMENT_BYTES and len(sql_text.encode()) > MAX_STATEMENT_BYTES:
        return _error(
            "001003",
            f"SQL compilation error: statement text of {len(sql_text.encode())} bytes exceeds --max-statement-bytes {MAX_STATEMENT_BYTES}",
            sql_state="42000",
        )
    kind, table, problem = _classify(sql_text)
    if problem is not None:
        return _error(problem[0], problem[1], sql_state="42601")
    lock_timeout = None
    if token is not None:
        lt = SESSION_PARAMS.get(token, {}).get("LOCK_TIMEOUT")
        if lt is not None and lt.isdigit():
            lock_timeout = int(lt)
    global DELAYED
    for d in DELAYS:
        if d[2] > 0 and d[0].search(sql_text):
            d[2] -= 1
            # The statement is held as if it ran long; the session's
            # STATEMENT_TIMEOUT_IN_SECONDS cancels it when shorter, as Snowflake
            # does (without it, it runs after its client may have given up).
            limit = SESSION_PARAMS.get(token, {}).get("STATEMENT_TIMEOUT_IN_SECONDS")
            limit = int(limit) if limit and limit.isdigit() and int(limit) > 0 else None
            DELAYED += 1
            try:
                if limit is not None and limit < d[1]:
                    await asyncio.sleep(limit)
                    return _error(
                        "000630",
                        f"Statement reached its statement or warehouse timeout of {limit} second(s) and was canceled.",
                        sql_state="57014",
                    )
                await asyncio.sleep(d[1])
            finally:
                DELAYED -= 1
            break
    STATS["statements"] += 1
    STATS["by_kind"][kind] = STATS["by_kind"].get(kind, 0) + 1
    ARRIVALS.append(time.time())
    if len(ARRIVALS) > ARRIVALS_KEPT:
        del ARRIVALS[: len(ARRIVALS) - ARRIVALS_KEPT]
    if COMPILE[0] > 0:
        # Compilation: before the statement queues for any lock.
        await asyncio.sleep(max(0.0, random.uniform(COMPILE[0] - COMPILE[1], COMPILE[0] + COMPILE[1])))
    exclusive = kind == "ddl"
    await CATALOG.acquire(exclusive)
    try:
        lock = None
        if kind == "dml":
            lock = TABLE_LOCKS.setdefault(table, asyncio.Lock())
            if lock.locked() and TABLE_WAITERS.get(table, 0) >= LOCK_WAITERS_LIMIT:
                STATS["lock_aborts"] += 1
                return _error(
                    "000625",
                    f"Statement was aborted because the number of waiters for this lock exceeds the {LOCK_WAITERS_LIMIT} statements limit.",
                    sql_state="57014",
                )
            TABLE_WAITERS[table] = TABLE_WAITERS.get(table, 0) + 1
            global MAX_WAITERS
            MAX_WAITERS = max(MAX_WAITERS, TABLE_WAITERS[table])
            try:
                await asyncio.wait_for(lock.acquire(), timeout=lock_timeout)
            except asyncio.TimeoutError:
                STATS["lock_aborts"] += 1
                return _error(
                    "000625",
                    f"Statement was aborted: it waited more than LOCK_TIMEOUT ({lock_timeout} s) for the lock on table {table}.",
                    sql_state="57014",
                )
            finally:
                TABLE_WAITERS[table] -= 1
        held = time.monotonic()
        try:
            # The modelled execution time is a floor: the statement runs (in
            # DuckDB, a few ms), then sleeps whatever is left of it, so it
            # takes max(modelled, real). A DML statement holds its table lock
            # throughout. asyncio sleeps, so statements wait together.
            modelled = 0.0
            if LATENCY[0] > 0:
                modelled = max(0.0, random.uniform(LATENCY[0] - LATENCY[1], LATENCY[0] + LATENCY[1]))
            resp = await _run(request, conn, kind)
            left = modelled - (time.monotonic() - held)
            if left > 0:
                await asyncio.sleep(left)
        except Exception as e:  # plain-text 500s and anything unexpected
            return _error("261000", f"emulator failure: {e}")
        finally:
            if lock is not None:
                LOCK_HELD_S[table] = LOCK_HELD_S.get(table, 0.0) + (time.monotonic() - held)
                lock.release()
    finally:
        await CATALOG.release(exclusive)
    return _answer(resp, request)


def _chunked(request: Request, data: dict) -> None:
    """Splits a large Arrow result the way Snowflake does: the first rows inline
    (`rowsetBase64`, `returned` = their count), the rest in chunks the client
    fetches by URL (`chunks`, `chunkHeaders`)."""
    import pyarrow as pa

    rowset = data.get("rowsetBase64") or ""
    if not CHUNK_ROWS or data.get("queryResultFormat") != "arrow" or not rowset:
        return
    table = pa.ipc.open_stream(base64.b64decode(rowset)).read_all()
    if table.num_rows <= max(INLINE_ROWS, CHUNK_ROWS):
        return

    def ipc(t) -> bytes:
        sink = pa.BufferOutputStream()
        with pa.ipc.new_stream(sink, t.schema) as w:
            w.write_table(t)
        return sink.getvalue().to_pybytes()

    inline = table.slice(0, INLINE_ROWS)
    data["rowsetBase64"] = base64.b64encode(ipc(inline)).decode() if INLINE_ROWS else ""
    data["returned"] = INLINE_ROWS
    chunks = []
    base = f"{request.url.scheme}://{request.url.netloc}/chunks"
    for start in range(INLINE_ROWS, table.num_rows, CHUNK_ROWS):
        part = table.slice(start, CHUNK_ROWS)
        body = ipc(part)
        cid = next(CHUNK_IDS)
        CHUNKS[cid] = body
        chunks.append({"url": f"{base}/{cid}", "rowCount": part.num_rows, "uncompressedSize": len(body)})
    data["chunks"] = chunks
    data["chunkHeaders"] = {}


async def delayed(request: Request) -> JSONResponse:
    return JSONResponse({"in_progress": DELAYED, "left": sum(d[2] for d in DELAYS)})


async def chunk(request: Request) -> Response:
    body = CHUNKS.pop(int(request.path_params["cid"]), None)
    if body is None:
        return Response(status_code=404)
    return Response(body, media_type="application/octet-stream")


def _answer(resp, request: Request = None) -> JSONResponse:
    """fakesnow's answer in the shape the Rust client expects."""
    body = _body(resp)
    if not body.get("success"):
        data = body.get("data") or {}
        return _error(str(data.get("errorCode") or body.get("code") or "000000"), body.get("message") or "query failed")
    data = body.setdefault("data", {})
    data.setdefault("returned", data.get("total", 0))
    data.setdefault("finalRoleName", "SYSADMIN")
    data.setdefault("version", 1)
    data.setdefault("parameters", [])
    if request is not None:
        _chunked(request, data)
    return JSONResponse(body)


async def stats(request: Request) -> JSONResponse:
    """GET /debug/stats[?since=UNIX_S]: statement counts, lock-wait aborts, and
    the arrival times (Unix s) of the statements since `since` (at most the last
    200,000), so a test can find the quiet stretches of an idle fleet."""
    since = float(request.query_params.get("since", "0") or 0)
    return JSONResponse(
        {
            **STATS,
            "max_waiters": MAX_WAITERS,
            # Seconds each table's lock was held, summed: its busy fraction
            # over a window is the difference over the window's length.
            "lock_held_s": LOCK_HELD_S,
            # This process's CPU seconds (all threads): when it grows by about
            # a core's worth per second, the emulator, not the model, limits.
            "cpu_s": time.process_time(),
            "arrivals": [t for t in ARRIVALS if t >= since],
        }
    )


async def session(request: Request) -> JSONResponse:
    return await fs.session(request)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--db-path", help="keep databases in files here, so a restarted emulator keeps its data")
    p.add_argument(
        "--rsa-public-key",
        action="append",
        default=[],
        metavar="USER=PEM_FILE",
        help="register USER's RSA public key for key-pair sign-in (repeatable)",
    )
    p.add_argument(
        "--insert-commit-delay-ms",
        type=float,
        default=0,
        help="hold each INSERT's transaction open this long after it ran (models statement latency)",
    )
    p.add_argument("--default-autocommit", choices=["true", "false"], help="the users' default AUTOCOMMIT")
    p.add_argument("--lock-waiters-limit", type=int, default=20, help="statements that may wait for one table lock")
    p.add_argument(
        "--max-statement-bytes",
        type=int,
        default=0,
        help="refuse statements longer than this (fault injection: a row the server refuses; 0: no limit)",
    )
    p.add_argument("--inline-rows", type=int, default=0, help="rows kept inline when a result is chunked")
    p.add_argument(
        "--chunk-rows",
        type=int,
        default=0,
        help="split Arrow results of more than max(inline, this) rows into chunks of this many (0: never)",
    )
    p.add_argument(
        "--delay-statement",
        action="append",
        default=[],
        metavar="REGEX=MS[:COUNT]",
        help="hold the next COUNT (default 1) statements matching REGEX for MS before running them (a slow or queued statement)",
    )
    p.add_argument(
        "--latency-ms",
        default="0",
        metavar="MEAN[:JITTER]",
        help="execution time of every statement, uniformly within MEAN +/- JITTER ms; DML holds its table lock meanwhile",
    )
    p.add_argument(
        "--translation-cache",
        action="store_true",
        help="translate each statement shape (its text with the literals taken out) once, not every statement (shapes.py)",
    )
    p.add_argument(
        "--compile-ms",
        default="0",
        metavar="MEAN[:JITTER]",
        help="compilation time of every statement, uniformly within MEAN +/- JITTER ms, spent before it queues for a lock",
    )
    a = p.parse_args()
    if a.translation_cache or os.environ.get("FLEET_Q_EMULATOR_TRANSLATION_CACHE") == "1":
        import shapes

        shapes.install()
        STATS["translation_cache"] = shapes.stats
    global LATENCY
    mean, _, jitter = a.latency_ms.partition(":")
    LATENCY = (float(mean) / 1000.0, float(jitter or 0) / 1000.0)
    global COMPILE
    mean, _, jitter = a.compile_ms.partition(":")
    COMPILE = (float(mean) / 1000.0, float(jitter or 0) / 1000.0)
    for item in a.delay_statement:
        pattern, _, rest = item.rpartition("=")
        ms, _, count = rest.partition(":")
        DELAYS.append([re.compile(pattern), float(ms) / 1000.0, int(count or 1)])
    global INLINE_ROWS, CHUNK_ROWS
    INLINE_ROWS, CHUNK_ROWS = a.inline_rows, a.chunk_rows
    global INSERT_COMMIT_DELAY, DEFAULT_AUTOCOMMIT, LOCK_WAITERS_LIMIT, MAX_STATEMENT_BYTES
    MAX_STATEMENT_BYTES = a.max_statement_bytes
    INSERT_COMMIT_DELAY = a.insert_commit_delay_ms / 1000.0
    DEFAULT_AUTOCOMMIT = None if a.default_autocommit is None else a.default_autocommit == "true"
    LOCK_WAITERS_LIMIT = a.lock_waiters_limit
    for item in a.rsa_public_key:
        user, _, path = item.partition("=")
        with open(path, "rb") as f:
            RSA_KEYS[user.upper()] = f.read()
    if a.db_path:
        # Sessions do not survive a restart (as with a real server dropping them);
        # the data does.
        fs.shared_fs = fs.FakeSnow(db_path=a.db_path)
    app = Starlette(
        routes=[
            Route("/session/v1/login-request", login, methods=["POST"]),
            Route("/queries/v1/query-request", query, methods=["POST"]),
            Route("/session", session, methods=["POST"]),
            Route("/chunks/{cid:int}", chunk, methods=["GET"]),
            Route("/debug/delayed", delayed, methods=["GET"]),
            Route("/debug/stats", stats, methods=["GET"]),
        ]
    )
    logging.getLogger("fakesnow.server").setLevel(logging.WARNING)
    uvicorn.run(app, host=a.host, port=a.port, log_level="warning")


if __name__ == "__main__":
    main()
