"""Handlers registered per SPOE message name, as in HAProxy's spoa-server.

A handler takes the Message and returns the actions to send back (a list or
tuple of SetVar / UnsetVar). A handler that must wait on I/O returns an
awaitable of that list instead; one that can answer at once stays on the fast
path with no task created.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence

from spoa_agent.spop import Action, Message

Actions = Sequence[Action]
Handler = Callable[[Message], Actions | Awaitable[Actions]]


class Agent:
    def __init__(self) -> None:
        self.handlers: dict[str, Handler] = {}
        # Run in each serving process's event loop: clients, background tasks.
        self.startup: list[Callable[[], Awaitable[None]]] = []
        self.shutdown: list[Callable[[], Awaitable[None]]] = []
        # Run on SIGHUP, in the loop: re-read configuration, keep connections.
        self.reload: list[Callable[[], None]] = []
        # Run on SIGUSR1, in the loop: reopen log files (logrotate).
        self.reopen: list[Callable[[], None]] = []

    def register(self, message_name: str, handler: Handler) -> None:
        if message_name in self.handlers:
            raise ValueError(f"a handler for {message_name!r} is registered already")
        self.handlers[message_name] = handler

    def handler(self, message_name: str) -> Callable[[Handler], Handler]:
        """Decorator form of register()."""

        def decorate(handler: Handler) -> Handler:
            self.register(message_name, handler)
            return handler

        return decorate
