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

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

# `fakesnow.server` is also a function exported by the package: import the module.
fs = importlib.import_module("fakesnow.server")

LOCK = asyncio.Lock()
# USER (upper case) -> the registered RSA public key (PEM bytes).
RSA_KEYS: dict = {}
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


async def _login_data(request: Request) -> dict:
    raw = await request.body()
    try:
        raw = gzip.decompress(raw)
    except OSError:
        pass
    try:
        return json.loads(raw).get("data") or {}
    except Exception:
        return {}


async def login(request: Request) -> JSONResponse:
    data = await _login_data(request)
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
    p.add_argument(
        "--rsa-public-key",
        action="append",
        default=[],
        metavar="USER=PEM_FILE",
        help="register USER's RSA public key for key-pair sign-in (repeatable)",
    )
    a = p.parse_args()
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
        ]
    )
    logging.getLogger("fakesnow.server").setLevel(logging.WARNING)
    uvicorn.run(app, host=a.host, port=a.port, log_level="warning")


if __name__ == "__main__":
    main()
