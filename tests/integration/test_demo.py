"""`make demo` tells its story end to end on this machine (with --once it
stops after the story instead of waiting for Ctrl-C)."""

from __future__ import annotations

import re
import subprocess
import sys

from spoa_agent.demo.stack import REPO


def test_demo_streams_refuses_and_rate_limits() -> None:
    done = subprocess.run([sys.executable, "-m", "spoa_agent.demo", "--once"], cwd=REPO,
                          capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stdout + done.stderr
    out = done.stdout
    assert "HTTP 200 text/event-stream" in out
    arrivals = [float(t) for t in re.findall(r"^\s+\+(\d+\.\d+)s\s+'", out, flags=re.M)]
    assert len(arrivals) == 4 and arrivals[-1] - arrivals[0] >= 0.6, out
    assert "Without a key:              401" in out
    assert "A model pull is blocked:    403" in out
    assert re.search(r"call 3: 429 \(Retry-After: \d+\)", out), out
    assert "KEY=spoa_" in out and "stopped HAProxy, agent, upstream and Redis" in out
