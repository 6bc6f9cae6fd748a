"""Token budgets: charged after the answer, by the usage the upstream reported.

A budget is checked before a request like a rate limit (plan.py puts it
last, gcra_batch.lua admits while a token is left) and charged here, from
the usage records HAProxy's Lua sends (usage/ingest.py), once per answer:
a batch of records sent again is not charged again. What a request may
overshoot by is in docs/usage.md.
"""

from __future__ import annotations

from collections.abc import Sequence
from importlib import resources
from typing import Any

from spoa_agent.ratelimit.limiter import limit_key
from spoa_agent.ratelimit.limits import Limit
from spoa_agent.usage.record import UsageRecord

CHARGE_SCRIPT = resources.files("spoa_agent.ratelimit").joinpath("charge_tokens.lua").read_text()
CHARGED = limit_key("charged", "")  # + a batch's id: it was charged
CHARGED_TTL = 3 * 86400  # seconds a batch's id is remembered, as usage's


def tokens_left(client: Any, budget: Limit) -> int:
    """What a budget has left now, from a sync Redis client (`token show`):
    negative while it is in debt."""
    seconds, micros = client.time()
    now = seconds * 1_000_000 + micros
    tat = max(int(client.get(budget.key) or 0), now)
    rate = budget.rate
    return int((rate.tolerance_us - (tat - now)) // rate.interval_us)


class BudgetCharger:
    def __init__(self, client: Any) -> None:
        self.script = client.register_script(CHARGE_SCRIPT)

    async def charge(self, records: Sequence[UsageRecord], batch_id: str) -> bool:
        """Charge the batch's records that name a budget, summed per budget;
        False when the batch was charged before (sent again) or names none."""
        costs: dict[str, int] = {}
        for record in records:
            charge = record.charge
            if charge is not None:
                costs[charge.key] = costs.get(charge.key, 0) + charge.interval_us * charge.tokens
        if not costs:
            return False
        return bool(await self.script(keys=list(costs),
                                      args=[CHARGED, CHARGED_TTL, batch_id, *costs.values()]))
