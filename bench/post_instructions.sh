#!/usr/bin/env bash
# Instructions per `POST /jobs` of one `conveyor api`, two builds or settings side by side,
# counted by callgrind (valgrind) while wrk posts the shared post_conveyor.lua body. An
# instruction count does not move with the machine's other load the way requests per second
# do, so it tells apart differences of 1 % that timed runs on a shared machine cannot.
# The API runs about 50 times slower under callgrind, so its submit batches are small:
# the count is higher than a request costs at full speed, and the difference is what to read.
# usage: bench/post_instructions.sh "A-venv [VAR=val...]" "B-venv [VAR=val...]" [SECS]
#        (needs valgrind, wrk, and redis-server on 127.0.0.1:6390)
set -uo pipefail
A=$1; B=$2; SECS=${3:-60}
LUA="$(cd "$(dirname "$0")/../.." && pwd)/shared/bench/compare/post_conveyor.lua"
OUT=$(mktemp -d)
one() { local name=$1 port=$2 db=$3; local venv=${4%% *}; local envs=""; [[ "$4" == *" "* ]] && envs=${4#* }
  redis-cli -p 6390 -n "$db" flushdb >/dev/null
  env $envs REDIS_URL=redis://127.0.0.1:6390/$db LOG_LEVEL=WARNING valgrind --tool=callgrind \
    --instr-atstart=no --callgrind-out-file="$OUT/$name.out" \
    "$venv/bin/conveyor" api --host 127.0.0.1 --port "$port" >"$OUT/$name.log" 2>&1 & local pid=$!
  for _ in $(seq 600); do curl -s -o /dev/null "http://127.0.0.1:$port/health/live" && break; sleep 0.5; done
  wrk -t1 -c16 -d20s -s "$LUA" "http://127.0.0.1:$port/jobs" >/dev/null  # warm-up, not counted
  callgrind_control -i on $pid >/dev/null
  local out; out=$(wrk -t1 -c16 -d${SECS}s -s "$LUA" "http://127.0.0.1:$port/jobs")
  callgrind_control -i off $pid >/dev/null
  kill -INT $pid; wait $pid 2>/dev/null
  local ir; ir=$(grep -oP 'Collected : \K\d+' "$OUT/$name.log")
  local n; n=$(grep -oP '\d+(?= requests in)' <<<"$out")
  printf '%s requests=%s instructions=%s per_request=%s non2xx=%s\n' "$name" "$n" "$ir" "$((ir / n))" \
    "$(grep -oP 'Non-2xx or 3xx responses: \K\d+' <<<"$out" || echo 0)"
}
one A 8491 14 "$A" > "$OUT/A.txt" &
one B 8492 15 "$B" > "$OUT/B.txt" &
wait
cat "$OUT/A.txt" "$OUT/B.txt"
rm -rf "$OUT"
