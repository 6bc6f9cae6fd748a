"""Policy: turns what a request is into a Decision. Pure code, no I/O."""

from spoa_agent.policy.presets import NAMES as PRESET_NAMES
from spoa_agent.policy.presets import preset_routes
from spoa_agent.policy.routes import Decision, Route, RouteError, RouteTable, normalize_host

__all__ = ["PRESET_NAMES", "Decision", "Route", "RouteError", "RouteTable", "normalize_host",
           "preset_routes"]
