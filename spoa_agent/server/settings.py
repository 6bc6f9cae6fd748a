"""The server's own settings: where it listens and the bounds of its work."""

from __future__ import annotations

from dataclasses import dataclass

from spoa_agent.spop import DEFAULT_MAX_FRAME_SIZE


@dataclass(frozen=True, slots=True)
class Listen:
    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


@dataclass(frozen=True, slots=True)
class ServerConfig:
    listen: Listen = Listen("127.0.0.1", 12345)
    workers: int = 1
    max_frame_size: int = DEFAULT_MAX_FRAME_SIZE
    # NOTIFYs being handled at once per connection before we stop reading it;
    # HAProxy 3.1+ sends up to 20 per connection, older ones more when pipelining.
    max_in_flight: int = 256
    # A connection that sends no HELLO in this time is closed (half-open peers).
    hello_timeout: float = 5.0
    # An async handler slower than this is answered with an empty ACK, which
    # haproxy.cfg turns into 503; keep it under SPOE's `timeout processing`.
    handler_timeout: float = 0.9
    # On SIGTERM, how long in-flight work may take before it is cancelled.
    drain_timeout: float = 10.0
