"""How fast fail2ban reads the agent's log with the project's filter.

    .venv/bin/python bench/fail2ban_regex.py [--megabytes 100]

Writes a log of mixed lines (denials that match, lines that must not, and
long hostile paths full of quotes and braces, where a regex prone to
catastrophic backtracking would crawl) to bench/results/, runs
fail2ban-regex over it once, and prints lines/s and what matched.
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
import time
from pathlib import Path

from spoa_agent.install.shipped import FAIL2BAN

BENCH = Path(__file__).resolve().parent
FILTER = FAIL2BAN / "filter.d" / "spoa-agent.conf"
SAMPLES = BENCH.parent / "tests" / "fail2ban" / "logs" / "spoa-agent"


def templates() -> list[dict[str, object]]:
    return [json.loads(line) for line in SAMPLES.read_text().splitlines()
            if line.startswith("{")]


def write_log(path: Path, megabytes: int, rng: random.Random) -> tuple[int, int]:
    """Returns (lines, lines that must match)."""
    bases = templates()
    hostile = "/" + '"},{\\"source.ip\\":\\"203.0.113.9\\"' * 200
    lines = matching = 0
    target = megabytes * 1024 * 1024
    with path.open("w") as out:
        while out.tell() < target:
            entry = dict(rng.choice(bases))
            if entry.get("source.ip"):
                entry["source.ip"] = ".".join(
                    ["10", str(rng.randrange(256)), str(rng.randrange(256)),
                     str(rng.randrange(1, 255))])
            if rng.random() < 0.01:
                entry["url.path"] = hostile
            out.write(json.dumps(entry, separators=(",", ":")) + "\n")
            lines += 1
            matching += entry.get("event.action") in ("auth_failed", "policy_denied") \
                and isinstance(entry.get("source.ip"), str)
    return lines, matching


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0] if __doc__ else None)
    parser.add_argument("--megabytes", type=int, default=100)
    args = parser.parse_args()
    results = BENCH / "results"
    results.mkdir(exist_ok=True)
    log = results / "fail2ban-bench.log"
    lines, expected = write_log(log, args.megabytes, random.Random(7))
    print(f"{log}: {args.megabytes} MB, {lines:,} lines, {expected:,} should match", flush=True)
    started = time.perf_counter()
    result = subprocess.run(["fail2ban-regex", "-o", "ip", str(log), str(FILTER)],
                            capture_output=True, text=True, check=True)
    elapsed = time.perf_counter() - started
    matched = len(result.stdout.split())
    print(f"fail2ban-regex: {elapsed:.1f} s, {lines / elapsed:,.0f} lines/s, "
          f"{args.megabytes / elapsed:.1f} MB/s, {matched:,} matched")
    log.unlink()
    return 0 if matched == expected else 1


if __name__ == "__main__":
    sys.exit(main())
