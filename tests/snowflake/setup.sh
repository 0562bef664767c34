#!/usr/bin/env bash
# Installs the Snowflake protocol peer used by the tests (fakesnow in server mode)
# into a virtualenv: `setup.sh VENV_DIR`. Idempotent and safe to run from several
# test processes at once (a lock serialises them). Versions pinned: fakesnow 0.12.1
# needs snowflake-connector-python < 5 (5.x breaks `import fakesnow`) and
# sqlglot 30.22.x.
#
# sqlglotc is sqlglot compiled with mypyc (the same source, published by the
# sqlglot project as the `c` extra): it cuts the emulator's CPU time per
# statement by about a third, and that CPU is what limits the fleet bench on a 2-core machine. It is an
# accelerator only: where no wheel exists for this platform the plain sqlglot
# runs (slower), and a marker stops every later run from trying again.
set -euo pipefail
# No wheel cache: a cache under ~/.cache/pip would hold a second copy of every
# download (duckdb, pyarrow, pandas: ~200 MB) on a disk the build already fills.
export PIP_NO_CACHE_DIR=1
venv="${1:?usage: setup.sh VENV_DIR}"
mkdir -p "$(dirname "$venv")"
exec 9>"$venv.lock"
flock 9
ready() {
  "$venv/bin/python" - <<'PY' 2>/dev/null
import importlib.metadata as m, os, sys
import fakesnow, uvicorn  # noqa: F401
try:
    m.version("sqlglotc")
except m.PackageNotFoundError:
    sys.exit(0 if os.path.exists(os.path.join(sys.prefix, ".no-sqlglotc")) else 1)
PY
}
if [ -x "$venv/bin/python" ] && ready; then
  exit 0
fi
[ -x "$venv/bin/python" ] || python3 -m venv "$venv"
if ! "$venv/bin/pip" install --quiet 'fakesnow[server]==0.12.1' 'snowflake-connector-python<5' 'sqlglot==30.22.0'; then
  echo "setup.sh: pip could not install the Snowflake peer into $venv; free space where it writes:" >&2
  df -h "$(dirname "$venv")" "${TMPDIR:-/tmp}" >&2 || true
  exit 1
fi
if ! err=$("$venv/bin/pip" install --quiet --only-binary=:all: 'sqlglotc==30.22.0' 2>&1); then
  if grep -qE "No matching distribution|Could not find a version" <<<"$err"; then
    echo "setup.sh: no sqlglotc wheel for this platform; the emulator runs on plain sqlglot (slower)" >&2
    touch "$venv/.no-sqlglotc"
  else
    # Any other failure (a full disk, a dropped connection) is retried by the
    # next run rather than remembered as "no wheel".
    echo "setup.sh: installing sqlglotc failed; this run uses plain sqlglot (slower): $err" >&2
  fi
fi
"$venv/bin/python" -c "import fakesnow, uvicorn"
