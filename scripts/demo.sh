#!/usr/bin/env bash
# Run the demo: a real server, 10,000 headlines, 4 worker processes, a checked output.
#   bash scripts/demo.sh                          # the default run
#   bash scripts/demo.sh --repeat 500 --workers 8  # more items, more workers
# Sets up .venv first (scripts/setup.sh); everything it writes goes to .demo/.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

bash scripts/setup.sh
exec .venv/bin/python scripts/demo.py "$@"
