"""spoa-agent: authentication and policy for HAProxy, over SPOE."""
