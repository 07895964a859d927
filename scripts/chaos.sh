#!/usr/bin/env bash
# The long chaos run: a real `planchet serve` with its private Redis, jobs of 300,000
# items (with poisoned lines), blocking, asyncio and `planchet work` workers, and a
# seeded schedule of faults (kill -9 of workers, the server and Redis; hung workers,
# duplicate results, half frames, connection churn) for DURATION seconds. It prints a
# table of the faults by kind and the verdict, and exits 0 only on PASS.
#
#   bash scripts/chaos.sh                 # seed 1, 600 s of faults (about 240 faults)
#   bash scripts/chaos.sh 7 900           # seed 7, 900 s
#   bash scripts/chaos.sh 7 600 --workers blocking=3,async=2,work=2 --interval 2
#
# SEED and DURATION are positional; anything after them goes to `python -m tests.chaos`
# (see its --help). A failed run keeps its directory (logs, input, output) and says where.
# Sets up .venv first (scripts/setup.sh).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

seed="${1:-1}"
duration="${2:-600}"
shift $(( $# < 2 ? $# : 2 ))

bash scripts/setup.sh
exec .venv/bin/python -m tests.chaos --seed "$seed" --duration "$duration" \
    --items 300000 --interval 2.5 "$@"
