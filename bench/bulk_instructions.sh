#!/usr/bin/env bash
# Instructions per job of a bulk submit (`bench/peer_adapter.py enqueue --mode bulk`), counted
# by callgrind (valgrind): the run of LARGE jobs less the run of SMALL, so that start-up cancels
# out, divided by the difference. An instruction count does not move with the machine's other
# load the way jobs per second do.
# usage: bench/bulk_instructions.sh [SRC ...]   (each a checkout's src/; default this one's)
#        (needs valgrind and a redis-server on 127.0.0.1:6390, which it empties)
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
SMALL=${SMALL:-1000}; LARGE=${LARGE:-10000}
count() {  # src, jobs -> instructions of the whole process
  redis-cli -p 6390 flushall >/dev/null
  PYTHONPATH=$1 REDIS_URL=redis://127.0.0.1:6390/0 valgrind --tool=callgrind \
    --callgrind-out-file=/dev/null "$ROOT/.venv/bin/python" "$ROOT/bench/peer_adapter.py" \
    enqueue --mode bulk --n "$2" 2>&1 >/dev/null | grep -oP 'Collected : \K\d+'
}
for src in "${@:-$ROOT/src}"; do
  small=$(count "$src" "$SMALL"); large=$(count "$src" "$LARGE")
  echo "$src: $(( (large - small) / (LARGE - SMALL) )) instructions per job ($SMALL jobs: $small, $LARGE: $large)"
done
