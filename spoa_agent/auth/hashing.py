"""argon2id hashing of key secrets, and verification off the event loop.

Parameters default to OWASP's argon2id recommendation (19 MiB, t=2, p=1).
Verification runs in a small thread pool (argon2-cffi releases the GIL), so
the event loop keeps serving while a hash is computed.
"""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError


@dataclass(frozen=True, slots=True)
class Argon2Params:
    time_cost: int = 2
    memory_kib: int = 19 * 1024
    parallelism: int = 1


class SecretHasher:
    def __init__(self, params: Argon2Params = Argon2Params()) -> None:
        self._hasher = PasswordHasher(
            time_cost=params.time_cost, memory_cost=params.memory_kib,
            parallelism=params.parallelism,
        )

    def hash(self, secret: str) -> str:
        return self._hasher.hash(secret)

    def verify(self, encoded: str, secret: str) -> bool:
        try:
            return self._hasher.verify(encoded, secret)
        except (VerifyMismatchError, VerificationError, InvalidHashError):
            return False


class VerifierPool:
    """Runs SecretHasher.verify in `workers` threads, off the event loop."""

    def __init__(self, hasher: SecretHasher, workers: int = 2) -> None:
        self._hasher = hasher
        self._executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="argon2")
        self.verified = 0

    async def verify(self, encoded: str, secret: str) -> bool:
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._executor, self._hasher.verify, encoded, secret)
        finally:
            self.verified += 1

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)
