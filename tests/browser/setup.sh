#!/usr/bin/env bash
# Installs the browser the dashboard tests drive: Debian's chromium and
# chromium-driver (/usr/bin/chromium, /usr/bin/chromedriver). Idempotent and
# safe to run from several test processes at once (a lock serialises them).
# Needs root (apt-get), as in CI; elsewhere install the two packages once.
set -euo pipefail
exec 9>/tmp/fleet-q-browser-setup.lock
flock 9
if [ -x /usr/bin/chromium ] && [ -x /usr/bin/chromedriver ]; then
  exit 0
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq chromium chromium-driver >/dev/null
test -x /usr/bin/chromium && test -x /usr/bin/chromedriver
