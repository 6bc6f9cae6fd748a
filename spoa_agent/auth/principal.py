"""Who a request is: what authentication found, what the policy may use."""

from __future__ import annotations

from dataclasses import dataclass

from spoa_agent.reasons import Reason


@dataclass(frozen=True, slots=True)
class Principal:
    kind: str  # "api_key", "device" or "jwt"
    id: str  # key id, or the JWT subject
    name: str  # key name, or the JWT subject: passed upstream and logged
    scopes: frozenset[str] = frozenset()
    routes: frozenset[str] = frozenset()  # rule names this key may use; empty: any
    models: frozenset[str] = frozenset()  # empty: any
    rate: str | None = None
    tokens: str | None = None  # its own LLM token budget, e.g. "200k/d"
    # Budgets of its own for some models, (model, budget) pairs, sorted.
    model_tokens: tuple[tuple[str, str], ...] = ()
    max_in_flight: int | None = None  # requests at once; HAProxy counts them
    expires_at: float | None = None


@dataclass(frozen=True, slots=True)
class AuthFailure:
    """Authentication said no: the reason logged and returned, and the key's
    id when one was named."""

    reason: Reason
    key_id: str = ""

    @property
    def status(self) -> int:
        return self.reason.status
