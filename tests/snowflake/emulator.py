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
- concurrent statements conflict in DuckDB (the second writer fails at once, where
  Snowflake queues it behind the table lock): statements are serialised.
fleet-q never selects a raw timestamp (it reads epoch milliseconds), so the
emulator's NULL-timestamp Arrow encoding does not matter.
"""

import argparse
import asyncio
import importlib
import json
import logging

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

# `fakesnow.server` is also a function exported by the package: import the module.
fs = importlib.import_module("fakesnow.server")

LOCK = asyncio.Lock()
SESSION_IDS = iter(range(1, 1 << 62))


def _body(resp) -> dict:
    try:
        return json.loads(resp.body)
    except Exception:
        return {}


def _error(code: str, message: str) -> JSONResponse:
    return JSONResponse(
        {
            "data": {
                "errorCode": code,
                "age": 0,
                "internalError": False,
                "queryId": "00000000-0000-0000-0000-000000000000",
                "sqlState": "XX000",
                "line": None,
                "pos": None,
            },
            "code": code,
            "message": message,
            "success": False,
        }
    )


async def login(request: Request) -> JSONResponse:
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


async def query(request: Request) -> JSONResponse:
    async with LOCK:
        try:
            resp = await fs.query_request(request)
        except Exception as e:  # plain-text 500s and anything unexpected
            return _error("261000", f"emulator failure: {e}")
    body = _body(resp)
    if not body.get("success"):
        data = body.get("data") or {}
        return _error(str(data.get("errorCode") or body.get("code") or "000000"), body.get("message") or "query failed")
    data = body.setdefault("data", {})
    data.setdefault("returned", data.get("total", 0))
    data.setdefault("finalRoleName", "SYSADMIN")
    data.setdefault("version", 1)
    data.setdefault("parameters", [])
    return JSONResponse(body)


async def session(request: Request) -> JSONResponse:
    return await fs.session(request)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--db-path", help="keep databases in files here, so a restarted emulator keeps its data")
    a = p.parse_args()
    if a.db_path:
        # Sessions do not survive a restart (as with a real server dropping them);
        # the data does.
        fs.shared_fs = fs.FakeSnow(db_path=a.db_path)
    app = Starlette(
        routes=[
            Route("/session/v1/login-request", login, methods=["POST"]),
            Route("/queries/v1/query-request", query, methods=["POST"]),
            Route("/session", session, methods=["POST"]),
        ]
    )
    logging.getLogger("fakesnow.server").setLevel(logging.WARNING)
    uvicorn.run(app, host=a.host, port=a.port, log_level="warning")


if __name__ == "__main__":
    main()
