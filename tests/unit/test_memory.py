"""argon2id's 19 MiB buffers go back to the system after each check
(server.lifecycle.return_large_buffers_to_the_system), instead of staying
resident in every argon2 thread's malloc arena."""

from __future__ import annotations

import subprocess
import sys

import pytest

PROGRAM = """
import sys
from concurrent.futures import ThreadPoolExecutor
from argon2 import PasswordHasher
from spoa_agent.server.lifecycle import return_large_buffers_to_the_system

if sys.argv[1] == "returned":
    assert return_large_buffers_to_the_system()
ph = PasswordHasher(time_cost=1, memory_cost=19456, parallelism=1)  # the OWASP memory
digest = ph.hash("secret")

def rss_mib():
    with open("/proc/self/status") as status:
        line = next(line for line in status if line.startswith("VmRSS"))
    return int(line.split()[1]) // 1024

before = rss_mib()
with ThreadPoolExecutor(2) as pool:  # as the agent's argon2 workers
    list(pool.map(lambda _: ph.verify(digest, "secret"), range(10)))
    print(rss_mib() - before)
"""


def grown_mib(mode: str) -> int:
    done = subprocess.run([sys.executable, "-c", PROGRAM, mode], capture_output=True,
                          text=True, timeout=60, check=True)
    return int(done.stdout)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_argon2_threads_do_not_keep_their_buffers() -> None:
    assert grown_mib("kept") >= 30  # glibc's default: 19 MiB stays in each of two threads
    assert grown_mib("returned") < 5
