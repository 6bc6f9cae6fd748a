"""The codec's one error: what went wrong and the status to disconnect with."""

from __future__ import annotations

from spoa_agent.spop.constants import Status


class SpopError(Exception):
    """A protocol violation by the peer (or a value we cannot encode).

    Carries the SPOP status code; the server turns it into AGENT-DISCONNECT.
    """

    def __init__(self, status: Status, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message

    def __repr__(self) -> str:
        return f"SpopError({self.status.name}, {self.message!r})"
