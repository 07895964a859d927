#!/usr/bin/env bash
# Make the development environment: .venv with Planchet (editable) and its test tools.
# Idempotent: safe to run again and again; scripts/test.sh runs it first.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

if [ ! -x .venv/bin/python ]; then
    python3 -m venv .venv
fi

# pip on this machine prints harmless "WARNING: Location ... is ignored" lines: drop them.
# (grep -v exits 1 when it prints nothing, hence the `|| true` inside the braces;
# pip's own exit status still fails the pipeline through pipefail.)
.venv/bin/pip install -q -e '.[test]' 2>&1 | { grep -v "^WARNING: Location .* is ignored" || true; }

# The browser tests drive Debian's Chromium (never a browser that Playwright downloads:
# no `playwright install`). As root (CI, this machine) install the package if it is
# missing; elsewhere say how, and the browser tests skip.
if [ ! -x /usr/bin/chromium ]; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        echo "setup.sh: installing Debian's chromium for the browser tests" >&2
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -qq
        apt-get install -y -qq chromium >/dev/null
    else
        echo "setup.sh: /usr/bin/chromium is missing, so the browser tests will skip;" \
             "install it with: sudo apt-get install chromium" >&2
    fi
fi

# the JavaScript client's dev dependency (ws, for its node --test run under Node 20);
# skipped while node_modules is newer than the lock file
if [ -f client/package-lock.json ] && command -v npm >/dev/null \
        && [ ! client/node_modules/.package-lock.json -nt client/package-lock.json ]; then
    (cd client && npm ci --silent --no-audit --no-fund)
fi
