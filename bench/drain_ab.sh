#!/usr/bin/env bash
# Alternating drains of two builds: `bench/worker_drain.py --runs 1 --jobs JOBS` (one worker
# process, concurrency 100, at LOG_LEVEL LVL, default INFO as deployments and the comparison
# run), each build filling its own queue; each run prints the build, its total and its steady
# rate (jobs/s).
# usage: bench/drain_ab.sh SRC_A SRC_B [PAIRS]   (each a checkout's src/, put on PYTHONPATH)
#        PYTHON=/path/to/venv/bin/python for another interpreter (one with Conveyor's
#        dependencies); JOBS (20000), LVL (INFO); needs a redis-server on 127.0.0.1:6390
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
A=$1; B=$2; PAIRS=${3:-4}
PYTHON=${PYTHON:-$ROOT/.venv/bin/python}
export REDIS_URL=redis://127.0.0.1:6390/0
for _ in $(seq "$PAIRS"); do for src in "$A" "$B"; do
  line=$(cd "$ROOT" && PYTHONPATH=$src "$PYTHON" bench/worker_drain.py \
    --log-level "${LVL:-INFO}" --runs 1 --jobs "${JOBS:-20000}" | grep "proc x")
  echo "$src: $(echo "$line" | awk -F'|' '{gsub(/ /, "", $3); gsub(/ /, "", $4); print "total " $3 ", steady " $4 " jobs/s"}')"
done; done
