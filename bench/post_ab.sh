#!/usr/bin/env bash
# ABBA: POST /jobs of one `conveyor api`, two builds or settings alternating, wrk -t2 -c64 with
# ../shared/bench/compare/post_conveyor.lua, plus the API process's CPU per request (from /proc).
# usage: bench/post_ab.sh ROUNDS SECS "A-venv [VAR=val...]" "B-venv [VAR=val...]" > out.txt
#        python3 bench/post_ab_summary.py out.txt   (needs redis-server on 127.0.0.1:6390 and wrk)
set -uo pipefail
ROUNDS=${1:-4}; SECS=${2:-10}; A=$3; B=$4
PORT=8391; export REDIS_URL=redis://127.0.0.1:6390/0
LUA="$(cd "$(dirname "$0")/../.." && pwd)/shared/bench/compare/post_conveyor.lua"
one() { local name=$1; local venv=${2%% *}; local envs=""; [[ "$2" == *" "* ]] && envs=${2#* }
  redis-cli -p 6390 flushall >/dev/null
  env $envs LOG_LEVEL=WARNING "$venv/bin/conveyor" api --host 127.0.0.1 --port $PORT >/tmp/ab.$name.log 2>&1 & local pid=$!
  for _ in $(seq 100); do curl -s -o /dev/null http://127.0.0.1:$PORT/health/live && break; sleep 0.1; done; sleep 0.5
  wrk -t2 -c64 -d2s -s $LUA http://127.0.0.1:$PORT/jobs >/dev/null
  local t0; t0=$(awk '{print $14+$15}' /proc/$pid/stat)
  local out; out=$(wrk -t2 -c64 -d${SECS}s --latency -s $LUA http://127.0.0.1:$PORT/jobs)
  local t1; t1=$(awk '{print $14+$15}' /proc/$pid/stat)
  local n; n=$(grep -oP '\K\d+(?= requests in)' <<<"$out")
  kill $pid; wait $pid 2>/dev/null
  printf '%s cpu_us=%s rps=%s p99=%s non2xx=%s\n' $name "$(( (t1 - t0) * 10000000 / n / 1000 ))" "$(grep -oP 'Requests/sec:\s+\K[\d.]+' <<<"$out")" \
    "$(grep -oP '^\s+99%\s+\K\S+' <<<"$out")" "$(grep -oP 'Non-2xx or 3xx responses: \K\d+' <<<"$out" || echo 0)"
}
for r in $(seq $ROUNDS); do
  if ((r % 2)); then one A "$A"; one B "$B"; else one B "$B"; one A "$A"; fi
done
