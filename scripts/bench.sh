#!/usr/bin/env bash
# Run the benchmarks (docs/performance.md): bash scripts/bench.sh [--quick] [...]
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/setup.sh
exec .venv/bin/python benchmarks/run.py "$@"
