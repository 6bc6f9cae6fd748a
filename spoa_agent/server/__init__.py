"""asyncio server around the SPOP codec: listener, connections, workers, shutdown."""

from spoa_agent.server.agent import Actions, Agent, Handler, Later, ValuesHandler
from spoa_agent.server.lifecycle import run, serve

__all__ = ["Actions", "Agent", "Handler", "Later", "ValuesHandler", "run", "serve"]
