"""Every reason the gateway refuses a request for: one enumeration, each
member carrying the HTTP status and the public code clients see.

The agent logs the reason, sends it to HAProxy (txn.spoa.reason), and
lua/spoa_deny.lua renders the refusal from it; tests/unit/test_reasons.py
holds this table against the Lua's. Members are strings, so they go into
log lines and SPOP variables as they are.
"""

from __future__ import annotations

from enum import StrEnum


class Reason(StrEnum):
    status: int
    code: str  # public: what the client is told (the OpenAI dialect's "code")

    def __new__(cls, value: str, status: int, code: str) -> Reason:
        member = str.__new__(cls, value)
        member._value_ = value
        member.status = status
        member.code = code
        return member

    @property
    def gateway_fault(self) -> bool:
        """The gateway's own trouble (Redis down, overload), never the client's."""
        return self.status >= 500

    # --- credentials (401) ---
    MISSING_CREDENTIAL = "missing_credential", 401, "missing_api_key"
    MALFORMED_CREDENTIAL = "malformed_credential", 401, "invalid_api_key"
    OVERSIZED_CREDENTIAL = "oversized_credential", 401, "invalid_api_key"
    MALFORMED_KEY = "malformed_key", 401, "invalid_api_key"
    BAD_CHECKSUM = "bad_checksum", 401, "invalid_api_key"
    UNKNOWN_KEY = "unknown_key", 401, "invalid_api_key"
    WRONG_SECRET = "wrong_secret", 401, "invalid_api_key"
    EXPIRED_KEY = "expired_key", 401, "expired_api_key"
    REVOKED_KEY = "revoked_key", 401, "revoked_api_key"
    # Device certificates (HAProxy verified the chain; the agent knows the
    # fingerprint): refused only when the request has no other credential.
    UNKNOWN_DEVICE = "unknown_device", 401, "unknown_device_certificate"
    REVOKED_DEVICE = "revoked_device", 401, "revoked_device_certificate"
    # JWTs
    MALFORMED_TOKEN = "malformed_token", 401, "invalid_api_key"
    UNKNOWN_ISSUER = "unknown_issuer", 401, "invalid_api_key"
    UNKNOWN_KID = "unknown_kid", 401, "invalid_api_key"
    ALGORITHM_NOT_ALLOWED = "algorithm_not_allowed", 401, "invalid_api_key"
    EXPIRED_TOKEN = "expired_token", 401, "expired_token"
    TOKEN_NOT_YET_VALID = "token_not_yet_valid", 401, "invalid_api_key"
    WRONG_AUDIENCE = "wrong_audience", 401, "invalid_api_key"
    WRONG_ISSUER = "wrong_issuer", 401, "invalid_api_key"
    MISSING_CLAIM = "missing_claim", 401, "invalid_api_key"
    BAD_SIGNATURE = "bad_signature", 401, "invalid_api_key"
    INVALID_TOKEN = "invalid_token", 401, "invalid_api_key"
    # A route with auth = "oidc" and no key: HAProxy asks the agent again
    # (oidc-request) with the browser's cookies; never the final answer
    # unless haproxy.cfg lacks that step.
    LOGIN_REQUIRED = "login_required", 401, "missing_api_key"

    # --- the request itself (400, 411, 413, 415) ---
    AMBIGUOUS_HOST = "ambiguous_host", 400, "ambiguous_host"
    AMBIGUOUS_BODY = "ambiguous_body", 400, "ambiguous_body"
    MODEL_MISSING = "model_missing", 400, "model_missing"
    LENGTH_REQUIRED = "length_required", 411, "length_required"
    BODY_TOO_LARGE = "body_too_large", 413, "body_too_large"
    BODY_TOO_LARGE_FOR_MODEL_CHECK = "body_too_large_for_model_check", 413, "body_too_large"
    ENCODED_BODY = "encoded_body", 415, "unsupported_content_encoding"

    # --- policy (403) ---
    ROUTE_NOT_ALLOWED = "route_not_allowed", 403, "endpoint_not_exposed"
    METHOD_NOT_ALLOWED = "method_not_allowed", 403, "endpoint_not_exposed"
    PATH_NOT_NORMALIZED = "path_not_normalized", 403, "endpoint_not_exposed"
    ROUTE_NOT_ALLOWED_FOR_KEY = "route_not_allowed_for_key", 403, "endpoint_not_allowed_for_key"
    MISSING_SCOPE = "missing_scope", 403, "insufficient_scope"
    MODEL_NOT_ALLOWED = "model_not_allowed", 403, "model_not_allowed"
    # A signed-in user outside the route's allow_groups / allow_emails.
    USER_NOT_ALLOWED = "user_not_allowed", 403, "user_not_allowed"
    # A key limited to some models asked for another by name (/v1/models/X):
    # to that key it does not exist, as a server without it would answer.
    MODEL_NOT_FOUND = "model_not_found", 404, "model_not_found"

    # --- limits (429) ---
    RATE_LIMITED = "rate_limited", 429, "rate_limited"
    # The key's (or JWT subject's) LLM token budget is used up until it refills.
    TOKEN_BUDGET_EXHAUSTED = "token_budget_exhausted", 429, "token_budget_exhausted"
    TOO_MANY_KEY_CHECKS = "too_many_key_checks", 429, "too_many_key_checks"

    # --- the gateway's own trouble (503): never counted against the client ---
    STORE_UNAVAILABLE = "store_unavailable", 503, "temporarily_unavailable"
    AUTH_OVERLOADED = "auth_overloaded", 503, "temporarily_unavailable"
    RATELIMIT_UNAVAILABLE = "ratelimit_unavailable", 503, "temporarily_unavailable"
    # A JWT issuer's keys (jwks_url, discovery) could not be fetched.
    JWKS_UNAVAILABLE = "jwks_unavailable", 503, "temporarily_unavailable"
    # Browser sessions are kept in Redis, which cannot be reached.
    SESSION_UNAVAILABLE = "session_unavailable", 503, "temporarily_unavailable"


# Refusals HAProxy makes by itself (haproxy.cfg's txn.gateway_deny), rendered
# by the same Lua; too_many_auth_failures is answered natively by haproxy.cfg
# (a flood's waves) with the same status and code.
HAPROXY_REASONS = {"banned": (403, "address_banned"),
                   "agent_unavailable": (503, "agent_unavailable"),
                   "too_many_in_flight": (429, "too_many_in_flight")}
