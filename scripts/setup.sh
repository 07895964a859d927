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

# browser tests: chromium is installed here by a later issue
