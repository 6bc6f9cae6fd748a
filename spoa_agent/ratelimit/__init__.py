"""Rate limits: GCRA in one Redis script for every limit of a request.

`limits` is pure (the policy uses it); `limiter` talks to Redis.
"""
