"""Handlers registered per SPOE message name, as in HAProxy's spoa-server.

A handler takes the Message and returns the actions to send back (a list or
tuple of SetVar / UnsetVar). One that can answer at once stays on the fast
path with no task created. One that must wait on I/O returns either a Later,
which it answers itself from a callback (I/O batched across requests: one
callback answers many, no Task, Future or timer per request), or an awaitable
of the actions (run as a Task: for rare, slow work).

A handler registered with the names of the arguments it reads
(register_values) gets their values in that order instead of a Message: the
codec decodes them straight into place, with no dict to build and read.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence

from spoa_agent.spop import Action, Message, Value

Actions = Sequence[Action]


class Later:
    """An answer a handler gives later, with answer(actions), exactly once."""

    __slots__ = ("_owner", "_then", "result")

    def __init__(self) -> None:
        self._then: Callable[[Actions], None] | None = None
        # The server's connection waiting on it, told owner(self, actions):
        # the Later is its own waiting entry there (no object of the
        # server's per request).
        self._owner: Callable[[Later, Actions], None] | None = None
        self.result: Actions | None = None  # answered before anyone asked

    def answer(self, actions: Actions) -> None:
        owner = self._owner
        if owner is not None:
            self._owner = None
            owner(self, actions)
            return
        then, self._then = self._then, None
        if then is not None:
            then(actions)
        elif self.result is None:
            self.result = actions

    def owned_by(self, owner: Callable[[Later, Actions], None]) -> None:
        """then() for the server: owner(self, actions) once answered (at
        once if it already is)."""
        if self.result is not None:
            owner(self, self.result)
        else:
            self._owner = owner

    def then(self, callback: Callable[[Actions], None]) -> None:
        """Call callback(actions) once answered (at once if it already is)."""
        if self.result is not None:
            callback(self.result)
        else:
            self._then = callback


Answer = Actions | Later | Awaitable[Actions]
Handler = Callable[[Message], Answer]
# Called with the values of the arguments it declared, in that order (None
# for those not sent).
ValuesHandler = Callable[[list[Value]], Answer]


class Agent:
    def __init__(self) -> None:
        self.handlers: dict[str, Handler] = {}
        self.value_handlers: dict[str, ValuesHandler] = {}
        self.schemas: dict[str, tuple[str, ...]] = {}  # value handlers' argument names
        # Run in each serving process's event loop: clients, background tasks.
        self.startup: list[Callable[[], Awaitable[None]]] = []
        self.shutdown: list[Callable[[], Awaitable[None]]] = []
        # Run on SIGHUP, in the loop: re-read configuration, keep connections.
        self.reload: list[Callable[[], None]] = []
        # Run on SIGUSR1, in the loop: reopen log files (logrotate).
        self.reopen: list[Callable[[], None]] = []

    def register(self, message_name: str, handler: Handler) -> None:
        self._check_new(message_name)
        self.handlers[message_name] = handler

    def register_values(self, message_name: str, arg_names: Sequence[str],
                        handler: ValuesHandler) -> None:
        """handler(values): the values of `arg_names`, in that order, for
        each message named `message_name`; arguments of other names are
        dropped."""
        self._check_new(message_name)
        self.schemas[message_name] = tuple(arg_names)
        self.value_handlers[message_name] = handler

    def _check_new(self, message_name: str) -> None:
        if message_name in self.handlers or message_name in self.value_handlers:
            raise ValueError(f"a handler for {message_name!r} is registered already")

    def handler(self, message_name: str) -> Callable[[Handler], Handler]:
        """Decorator form of register()."""

        def decorate(handler: Handler) -> Handler:
            self.register(message_name, handler)
            return handler

        return decorate
