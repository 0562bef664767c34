#!/usr/bin/env bash
# Installs the Snowflake protocol peer used by the tests (fakesnow in server mode)
# into a virtualenv: `setup.sh VENV_DIR`. Idempotent and safe to run from several
# test processes at once (a lock serialises them). Versions pinned: fakesnow 0.12.1
# needs snowflake-connector-python < 5 (5.x breaks `import fakesnow`).
set -euo pipefail
venv="${1:?usage: setup.sh VENV_DIR}"
mkdir -p "$(dirname "$venv")"
exec 9>"$venv.lock"
flock 9
if [ -x "$venv/bin/python" ] && "$venv/bin/python" -c "import fakesnow, uvicorn" 2>/dev/null; then
  exit 0
fi
python3 -m venv "$venv"
"$venv/bin/pip" install --quiet 'fakesnow[server]==0.12.1' 'snowflake-connector-python<5'
"$venv/bin/python" -c "import fakesnow, uvicorn"
