"""spoa-agent: authentication and policy for HAProxy, over SPOE."""

import os

if os.environ.get("SPOA_AGENT_PURE_PYTHON"):
    # Run the per-request path from its Python sources, not compiled.
    from spoa_agent import native

    native.prefer_sources()
