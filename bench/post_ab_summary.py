"""Summary of `bench/post_ab.sh` output: medians and pair ratios (B/A) of rate and CPU/request."""

from __future__ import annotations

import re
import statistics
import sys
from pathlib import Path


def main(path: str) -> None:
    rate: dict[str, list[float]] = {"A": [], "B": []}
    cpu: dict[str, list[float]] = {"A": [], "B": []}
    for line in Path(path).read_text().splitlines():
        found = re.match(r"(A|B) cpu_us=(\d+) rps=([\d.]+)", line)
        if found:
            cpu[found[1]].append(float(found[2]))
            rate[found[1]].append(float(found[3]))
    for name, runs in (("requests/s", rate), ("CPU us/request", cpu)):
        a, b = statistics.median(runs["A"]), statistics.median(runs["B"])
        pairs = " ".join(f"{y / x:.3f}" for x, y in zip(runs["A"], runs["B"], strict=False))
        print(f"{name}: A {a:.0f}, B {b:.0f}, B/A {b / a:.3f}; pairs {pairs}")


if __name__ == "__main__":
    main(sys.argv[1])
