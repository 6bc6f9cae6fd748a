"""`make demo` tells its story end to end on this machine (with --once it
stops after the story instead of waiting for Ctrl-C)."""

from __future__ import annotations

import re
import subprocess
import sys

from spoa_agent.demo.stack import REPO
from tests.conftest import EXAMPLE_CONFIG

AGENT_LOG = REPO / ".demo" / "agent.log"


def test_demo_streams_refuses_and_rate_limits() -> None:
    # The shipped policy with the tests' loose deadlines: on a stalled CI
    # machine a 250 ms Redis timeout turns the story's calls into 503s.
    done = subprocess.run([sys.executable, "-m", "spoa_agent.demo", "--once",
                           "--config", str(EXAMPLE_CONFIG)], cwd=REPO,
                          capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stdout + done.stderr
    # On failure, what the agent logged says why (a timeout, Redis, a denial).
    out = done.stdout + "\n--- agent.log (last lines) ---\n" + "".join(
        AGENT_LOG.read_text().splitlines(keepends=True)[-15:])
    assert "HTTP 200 text/event-stream" in out
    arrivals = [float(t) for t in re.findall(r"^\s+\+(\d+\.\d+)s\s+'", out, flags=re.M)]
    assert len(arrivals) == 4 and arrivals[-1] - arrivals[0] >= 0.6, out
    assert "Without a key:              401" in out
    assert "A model pull is blocked:    403" in out
    assert re.search(r"call 3: 429 \(Retry-After: \d+\)", out), out
    assert "KEY=spoa_" in out and "stopped HAProxy, agent, upstream and Redis" in out
