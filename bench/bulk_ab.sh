#!/usr/bin/env bash
# Alternating bulk submits of two builds: 20,000 no-op jobs in batches of 1,000
# (`peer_adapter.py enqueue --mode bulk`, as the shared harness submits them), each into an
# emptied Redis; each run prints the submit rate, the growth of Redis's `used_memory` per job
# and Redis's own CPU per job (`used_cpu_sys` + `used_cpu_user`).
# usage: bench/bulk_ab.sh ROOT_A ROOT_B [PAIRS]   (each a checkout: its bench/ and src/ run)
#        PYTHON=/path/to/venv/bin/python for another interpreter (one with Conveyor's
#        dependencies); needs a redis-server on 127.0.0.1:6390, which it empties
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
A=$1; B=$2; PAIRS=${3:-4}; N=20000
PYTHON=${PYTHON:-$ROOT/.venv/bin/python}
export REDIS_URL=redis://127.0.0.1:6390/0
info() { redis-cli -p 6390 info "$1" | tr -d '\r'; }
cpu() { info cpu | awk -F: '/^used_cpu_(sys|user):/ { s += $2 } END { printf "%.6f", s }'; }
memory() { info memory | awk -F: '/^used_memory:/ { print $2 }'; }
for _ in $(seq "$PAIRS"); do for root in "$A" "$B"; do
  redis-cli -p 6390 flushall >/dev/null
  m0=$(memory); c0=$(cpu)
  out=$(cd "$root" && PYTHONPATH=$root/src "$PYTHON" bench/peer_adapter.py enqueue --mode bulk --n $N)
  c1=$(cpu); m1=$(memory)
  "$PYTHON" -c "
import json
rate = json.loads('$out')['rate']
print(f'$root: {rate:,.0f} jobs/s, {($m1 - $m0) / $N:.0f} B a job, Redis {($c1 - $c0) * 1e6 / $N:.1f} µs a job')"
done; done
