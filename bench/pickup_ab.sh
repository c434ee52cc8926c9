#!/usr/bin/env bash
# Alternating pickup latency of two builds, as the shared harness measures it: a
# `conveyor worker --processes 1 --concurrency 100` at LOG_LEVEL=INFO, 5 warm-up jobs, then
# 2,000 no-op jobs submitted at 200 a second (`peer_adapter.py enqueue --mode paced`); each
# run prints the claimed-minus-ready latencies' p50, p99 and maximum (`peer_adapter.py
# latencies`), in ms.
# usage: bench/pickup_ab.sh SRC_A SRC_B [PAIRS]   (each a checkout's src/, put on PYTHONPATH)
#        PYTHON=/path/to/venv/bin/python for another interpreter (one with Conveyor's
#        dependencies and its `conveyor` script beside it); needs a redis-server on
#        127.0.0.1:6390, which it empties
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
A=$1; B=$2; PAIRS=${3:-3}
PYTHON=${PYTHON:-$ROOT/.venv/bin/python}; CONVEYOR="$(dirname "$PYTHON")/conveyor"
export REDIS_URL=redis://127.0.0.1:6390/0 LOG_LEVEL=INFO
for _ in $(seq "$PAIRS"); do for src in "$A" "$B"; do
  export PYTHONPATH=$src CONVEYOR_KEY_PREFIX=pickup$RANDOM
  redis-cli -p 6390 flushall >/dev/null
  "$CONVEYOR" worker --processes 1 --concurrency 100 >/dev/null 2>&1 & worker=$!
  "$PYTHON" "$ROOT/bench/peer_adapter.py" enqueue --mode paced --n 5 --rate 50 >/dev/null
  sleep 2
  redis-cli -p 6390 del "{$CONVEYOR_KEY_PREFIX:default}:index:succeeded" >/dev/null
  "$PYTHON" "$ROOT/bench/peer_adapter.py" enqueue --mode paced --n 2000 --rate 200 >/dev/null
  sleep 1
  kill -TERM $worker; wait $worker || true
  "$PYTHON" "$ROOT/bench/peer_adapter.py" latencies | "$PYTHON" -c "
import json, sys
ms = sorted(1000 * s for s in json.load(sys.stdin)); n = len(ms)
print(f'$src: {n} jobs, p50 {ms[n // 2]:.2f} p99 {ms[int(n * 0.99)]:.2f} max {ms[-1]:.2f} ms')"
done; done
