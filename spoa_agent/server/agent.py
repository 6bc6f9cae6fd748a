"""Handlers registered per SPOE message name, as in HAProxy's spoa-server.

A handler takes the Message and returns the actions to send back (a list or
tuple of SetVar / UnsetVar). One that can answer at once stays on the fast
path with no task created. One that must wait on I/O returns either a Later,
which it answers itself from a callback (I/O batched across requests: one
callback answers many, no Task, Future or timer per request), or an awaitable
of the actions (run as a Task: for rare, slow work).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence

from spoa_agent.spop import Action, Message

Actions = Sequence[Action]


class Later:
    """An answer a handler gives later, with answer(actions), exactly once."""

    __slots__ = ("_then", "result")

    def __init__(self) -> None:
        self._then: Callable[[Actions], None] | None = None
        self.result: Actions | None = None  # answered before anyone asked

    def answer(self, actions: Actions) -> None:
        then, self._then = self._then, None
        if then is not None:
            then(actions)
        elif self.result is None:
            self.result = actions

    def then(self, callback: Callable[[Actions], None]) -> None:
        """Call callback(actions) once answered (at once if it already is)."""
        if self.result is not None:
            callback(self.result)
        else:
            self._then = callback


Handler = Callable[[Message], Actions | Later | Awaitable[Actions]]


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
