-- Unit tests of lua/spoa_deny.lua's pure helpers under plain Lua 5.3 / 5.4,
-- with HAProxy's `core` stubbed. Run by tests/unit/test_lua.py:
--   lua5.4 tests/lua/test_spoa_deny.lua lua/spoa_deny.lua
-- Asserts fail with a message; on success it prints one line per rendered
-- refusal ("status<TAB>headers-json<TAB>body") for Python to parse the bodies.

local registered = {}
core = {
  register_service = function(name, mode, fn) registered[name] = { mode, fn } end,
  register_action = function(name, hooks, fn, nargs) registered[name] = { hooks, fn, nargs } end,
}
local M = dofile(arg[1])

local function eq(got, want, what)
  if got ~= want then
    error(string.format("%s: got %s, want %s", what, tostring(got), tostring(want)), 2)
  end
end

-- Registration: what haproxy.cfg names.
eq(registered["spoa-deny"][1], "http", "spoa-deny is an HTTP service")
eq(registered["spoa-ratelimit-headers"][1][1], "http-res", "headers action runs on responses")

-- Dialect by path (and Anthropic's header on shared paths).
eq(M.dialect("/v1/messages"), "anthropic", "messages")
eq(M.dialect("/v1/messages/count_tokens"), "anthropic", "messages subpath")
eq(M.dialect("/v1/messagesX"), "openai", "not a messages path")
eq(M.dialect("/v1/models", "2023-06-01"), "anthropic", "anthropic-version header")
eq(M.dialect("/api/pull"), "ollama", "ollama api")
eq(M.dialect("/apix"), "openai", "not the ollama api")
eq(M.dialect("/v1/chat/completions"), "openai", "openai")
eq(M.dialect(nil), "openai", "no path")

-- JSON strings: quotes, backslashes, control bytes, invalid UTF-8.
eq(M.json_string('a"b\\c'), '"a\\"b\\\\c"', "quotes and backslash")
eq(M.json_string("l1\nl2\0"), '"l1\\nl2\\u0000"', "control characters")
eq(M.json_string("caf\195\169"), '"caf\195\169"', "valid UTF-8 kept")
eq(M.json_string("bad\255\254"), '"bad??"', "invalid UTF-8 replaced")

-- Denials: status, public code, and a message saying what to do.
local function denial(vars) return { M.denial(vars) } end
local d = denial({})
eq(d[1], 503, "no decision at all: agent unavailable")
eq(d[2], "agent_unavailable", "agent unavailable code")
d = denial({ deny = "banned" })
eq(d[1], 403, "banned")
d = denial({ decision = "deny", status = 401, reason = "missing_credential" })
eq(d[2], "missing_api_key", "missing key code")
assert(d[3]:find("Authorization: Bearer", 1, true), "missing key message says how")
d = denial({ decision = "deny", status = 401, reason = "wrong_secret" })
eq(d[2], "invalid_api_key", "wrong secret and unknown key look the same")
eq(denial({ decision = "deny", status = 401, reason = "unknown_key" })[2], "invalid_api_key",
   "unknown key")
d = denial({ decision = "deny", status = 401, reason = "expired_key" })
assert(d[3]:find("expired", 1, true), "expired message")
d = denial({ decision = "deny", status = 429, reason = "rate_limited", retry_after = 7 })
eq(d[3]:find("retry in 7 s", 1, true) ~= nil, true, "retry time in the message")
d = denial({ decision = "deny", status = 403, reason = "model_not_allowed", detail = 'x"\nevil' })
eq(d[3]:find("'x\"evil'", 1, true) ~= nil, true, "model shown without control characters")
d = denial({ decision = "deny", status = 403, reason = "model_not_allowed",
             detail = string.rep("m", 500) })
assert(#d[3] < 200, "a long model name is cut")
d = denial({ decision = "deny", status = 413, reason = "body_too_large", detail = "1024" })
assert(d[3]:find("1024 bytes", 1, true), "size limit in the message")
d = denial({ decision = "deny", status = 429, reason = "some_future_reason", retry_after = 3 })
eq(d[1], 429, "unknown reason falls back on its status")
assert(d[3]:find("retry in 3 s", 1, true), "fallback 429 message")
d = denial({ decision = "deny", status = 418, reason = "odd" })
eq(d[1], 403, "unknown status falls back on 403")
d = denial({ decision = "deny", status = 429, reason = "too_many_key_checks" })
eq(d[2], "too_many_key_checks", "too many key checks at once code")
assert(d[3]:find("retry in 1 s", 1, true), "too many key checks: retry in a second")

-- Headers.
local function header(headers, name)
  for _, h in ipairs(headers) do
    if h[1] == name then return h[2] end
  end
end
local h = M.denial_headers({}, 401, "missing_api_key")
eq(header(h, "WWW-Authenticate"), 'Bearer realm="spoa-agent"', "bare challenge")
h = M.denial_headers({}, 401, "invalid_api_key")
eq(header(h, "WWW-Authenticate"), 'Bearer realm="spoa-agent", error="invalid_token"',
   "invalid_token challenge")
h = M.denial_headers({ detail = "admin" }, 403, "insufficient_scope")
eq(header(h, "WWW-Authenticate"), 'Bearer realm="spoa-agent", error="insufficient_scope", scope="admin"',
   "scope challenge")
local limited = { retry_after = 5, rl_scope = "key", rl_limit = 10, rl_window = 60,
                  rl_remaining = 0, rl_reset = 5 }
h = M.denial_headers(limited, 429, "rate_limited")
eq(header(h, "Retry-After"), "5", "Retry-After")
eq(header(h, "RateLimit-Policy"), '"key";q=10;w=60', "policy header")
eq(header(h, "RateLimit"), '"key";r=0;t=5', "ratelimit header")
eq(header(h, "X-RateLimit-Remaining"), "0", "x-ratelimit-remaining")
eq(#M.ratelimit_headers({}), 0, "no limit, no headers")

-- read_vars goes through get_var with HAProxy's names.
local seen = {}
local vars = M.read_vars(function(name) seen[#seen + 1] = name; return name end, { "status" })
eq(vars.status, "txn.spoa.status", "agent variable name")
eq(vars.deny, "txn.gateway_deny", "gateway variable name")

-- Rendered refusals for Python to parse (every dialect x every reason).
local json_headers = function(headers)
  local parts = {}
  for _, hd in ipairs(headers) do
    parts[#parts + 1] = M.json_string(hd[1]) .. ":" .. M.json_string(hd[2])
  end
  return "{" .. table.concat(parts, ",") .. "}"
end
local cases = {
  { deny = "banned" }, {}, { deny = "too_many_in_flight" },
  { decision = "deny", status = 401, reason = "missing_credential" },
  { decision = "deny", status = 401, reason = "wrong_secret" },
  { decision = "deny", status = 403, reason = "route_not_allowed" },
  { decision = "deny", status = 403, reason = "missing_scope", detail = "admin" },
  { decision = "deny", status = 403, reason = "model_not_allowed", detail = 'q"\\\n\255' },
  { decision = "deny", status = 400, reason = "model_missing" },
  { decision = "deny", status = 413, reason = "body_too_large", detail = "10" },
  { decision = "deny", status = 503, reason = "store_unavailable" },
  limited,
}
limited.decision, limited.status, limited.reason = "deny", 429, "rate_limited"
for _, path in ipairs({ "/v1/messages", "/api/pull", "/v1/chat/completions" }) do
  for _, case in ipairs(cases) do
    local status, headers, body = M.render(case, path)
    print(path .. "\t" .. status .. "\t" .. json_headers(headers) .. "\t" .. body)
  end
end
