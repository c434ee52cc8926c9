#!/usr/bin/env bash
# Instructions per log line of a worker's `job claimed` line, as `conveyor worker` configures
# logging (LOG_LEVEL=INFO, the console format, stderr to a file), counted by callgrind
# (valgrind): the run of LARGE lines less the run of SMALL, so that start-up cancels out,
# divided by the difference. The write's system call is the kernel's and is not counted.
# usage: bench/log_instructions.sh [SRC ...]   (each a checkout's src/; default this one's)
#        LOG_FORMAT=json for the JSON format
#        VIA=log_event for the line as the worker writes it (`entrypoints.logs.log_event`)
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
SMALL=${SMALL:-2000}; LARGE=${LARGE:-4000}
OUT=$(mktemp); trap 'rm -f "$OUT"' EXIT
count() {  # src, lines -> instructions of the whole process
  PYTHONPATH=$1 LINES=$2 valgrind --tool=callgrind --callgrind-out-file=/dev/null \
    "$ROOT/.venv/bin/python" -c '
import logging, os
from entrypoints import logs
from entrypoints.logs import configure_logging
from entrypoints.settings import LogFormat
configure_logging("INFO", LogFormat(os.environ.get("LOG_FORMAT", "console")), ["s3cret-s3cret"])
log = logging.getLogger("conveyor.worker")
job = {"job_id": "37a8eec121079a9467b3f419dd38291d", "type": "dummy", "queue": "default"}
via_event = os.environ.get("VIA") == "log_event"
for _ in range(int(os.environ["LINES"])):
    if via_event:
        logs.log_event(log, logging.INFO, "job claimed", {**job, "attempt": 1})
    else:
        log.info("job claimed", extra={**job, "attempt": 1})
' 2>"$OUT" >/dev/null || { cat "$OUT" >&2; exit 1; }
  grep -a -oP 'Collected : \K\d+' "$OUT"
}
for src in "${@:-$ROOT/src}"; do
  small=$(count "$src" "$SMALL"); large=$(count "$src" "$LARGE")
  echo "$src: $(( (large - small) / (LARGE - SMALL) )) instructions per line ($SMALL lines: $small, $LARGE: $large)"
done
