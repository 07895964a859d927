#!/usr/bin/env bash
# THE test command: set up .venv, lint, then run the tests (extra args go to pytest).
#   bash scripts/test.sh                      # everything
#   bash scripts/test.sh tests/test_embedded.py -x
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

bash scripts/setup.sh
.venv/bin/ruff check .
.venv/bin/mypy planchet
.venv/bin/pytest -q "$@"
