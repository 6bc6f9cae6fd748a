"""Policy: turns what a request is into a Decision. Pure code, no I/O."""

from spoa_agent.policy.routes import Decision, Route, RouteError, RouteTable

__all__ = ["Decision", "Route", "RouteError", "RouteTable"]
