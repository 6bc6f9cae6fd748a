"""LLM usage per key: what the upstream reports (tokens in and out, per model),
counted by HAProxy's Lua filter (lua/spoa_usage.lua) as each answer streams
by, sent to the agent (ingest), kept as hourly and daily roll-ups in Redis
(store), and read back by `spoa-agent usage` (report)."""
