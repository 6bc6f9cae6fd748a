"""What a matched route and the caller ask beyond the path: the key's own
routes, scopes, the body's size and model. Pure, no I/O; table-tested.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Final

from spoa_agent.auth.principal import Principal
from spoa_agent.policy.body import BodyFacts, model_of
from spoa_agent.policy.routes import Decision, refuse
from spoa_agent.reasons import Reason

# Where a client looks up one model by name (OpenAI's and Anthropic's API).
MODEL_BY_NAME: Final = "/v1/models/"


def check_access(decision: Decision, principal: Principal | None, body: BodyFacts,
                 path: str, model_budgets: bool = False) -> Decision:
    """`decision` (an allowed route) if the caller may make this request, or
    the refusal, naming what it was about in `detail`. `model_budgets`: a
    token budget per model may apply to this caller, so the body's model is
    read (and a body read two ways refused) as for a key's model list."""
    route = decision.route
    if route is None:
        return decision
    rule = decision.rule
    check_model = bool(principal is not None and (principal.models or model_budgets)
                       and route.model_in_body)
    if route.max_body is not None or check_model:
        length = body.length()
        if isinstance(length, Reason):
            return refuse(length, rule)
        if route.max_body is not None and length > route.max_body:
            return refuse(Reason.BODY_TOO_LARGE, rule, str(route.max_body))
    if principal is None:
        return decision
    if principal.routes and rule not in principal.routes:
        return refuse(Reason.ROUTE_NOT_ALLOWED_FOR_KEY, rule)
    missing = route.scopes - principal.scopes
    if missing:
        return refuse(Reason.MISSING_SCOPE, rule, " ".join(sorted(missing)))
    if principal.models and path.startswith(MODEL_BY_NAME):
        named = path[len(MODEL_BY_NAME):]
        if named not in principal.models:
            return refuse(Reason.MODEL_NOT_FOUND, rule, named)
    if check_model:
        whole = body.whole()
        model = whole if isinstance(whole, Reason) else model_of(whole)
        if model is Reason.MODEL_MISSING and not principal.models:
            return decision  # no model to budget for: the key's own budget applies
        if isinstance(model, Reason):
            return refuse(model, rule)
        if principal.models and model not in principal.models:
            return refuse(Reason.MODEL_NOT_ALLOWED, rule, model)
        return replace(decision, model=model)
    return decision
