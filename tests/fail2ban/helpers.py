"""fail2ban-regex with the project's filter, as tests use it."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from spoa_agent.install.shipped import FAIL2BAN

REPO = Path(__file__).resolve().parents[2]
FILTER = FAIL2BAN / "filter.d" / "spoa-agent.conf"
SAMPLES = REPO / "tests" / "fail2ban" / "logs" / "spoa-agent"
FAIL2BAN_REGEX = shutil.which("fail2ban-regex") or "/usr/bin/fail2ban-regex"


def banned_addresses(log: str | Path, filter_spec: str = str(FILTER)) -> list[str]:
    """The address fail2ban reads from each matching line of `log` (a file, or one line)."""
    result = subprocess.run([FAIL2BAN_REGEX, "-o", "ip", str(log), filter_spec],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    return result.stdout.split()
