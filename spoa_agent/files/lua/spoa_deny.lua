-- spoa-agent's answers to refused requests, in the dialect of the API the
-- client called, so each SDK raises its own typed error:
--   Anthropic  {"type":"error","error":{"type":...,"message":...}}  /v1/messages
--   Ollama     {"error":"..."}                                       /api/...
--   OpenAI     {"error":{"message":...,"type":...,"code":...}}       elsewhere
-- and the rate-limit headers of allowed answers.
--
-- haproxy.cfg loads this file (lua-load) and makes every decision itself;
-- the file only renders:
--   http-request use-service lua.spoa-deny              (any refusal)
--   http-response lua.spoa-ratelimit-headers            (allowed answers)
-- The service reads the agent's variables (txn.spoa.*) and, for refusals
-- HAProxy makes without the agent, txn.gateway_deny (banned,
-- too_many_in_flight). It never sees a credential: haproxy.cfg passes
-- secrets to the agent only, so no message can echo one.
--
-- Runs on Lua 5.3 and 5.4. The helpers are pure and tested under plain Lua
-- (tests/lua/); registration at the bottom happens only inside HAProxy.

local M = {}

local REALM = 'Bearer realm="spoa-agent"'

-- What the client is told, per reason: the public code, and a message that
-- says what to do. `%s` is filled by `detail` (a model, scopes, a size) or
-- the seconds to wait. Reasons the agent may add later fall back on the
-- entry for their status (M.BY_STATUS).
local REASONS = {
  banned = { 403, "address_banned",
    "this address is blocked for a while after repeated failed requests; try again later" },
  agent_unavailable = { 503, "agent_unavailable",
    "the gateway cannot check requests right now; retry in a few seconds" },
  missing_credential = { 401, "missing_api_key",
    "no API key was sent: send it as 'Authorization: Bearer <key>' or 'x-api-key: <key>'" },
  malformed_credential = { 401, "invalid_api_key",
    "the API key is malformed: check that it was copied whole" },
  bad_checksum = { 401, "invalid_api_key",
    "the API key is mistyped: check that it was copied whole" },
  oversized_credential = { 401, "invalid_api_key",
    "the credential is too long to be an API key" },
  expired_key = { 401, "expired_api_key",
    "this API key has expired: ask the gateway's operator for a new one" },
  revoked_key = { 401, "revoked_api_key",
    "this API key was revoked: ask the gateway's operator for a new one" },
  unknown_device = { 401, "unknown_device_certificate",
    "this device's certificate is not registered with the gateway: ask its operator to add it, or send an API key" },
  revoked_device = { 401, "revoked_device_certificate",
    "this device's certificate was revoked: ask the gateway's operator for a new one, or send an API key" },
  expired_token = { 401, "expired_token",
    "this token has expired: get a fresh one from your identity provider" },
  login_required = { 401, "missing_api_key",
    "no API key was sent: send it as 'Authorization: Bearer <key>', or sign in with a browser" },
  user_not_allowed = { 403, "user_not_allowed",
    "the signed-in user may not use this endpoint: ask the gateway's operator for access" },
  session_unavailable = { 503, "temporarily_unavailable",
    "the gateway cannot check sessions right now; retry in a few seconds" },
  jwks_unavailable = { 503, "temporarily_unavailable",
    "the gateway cannot fetch the token issuer's keys right now; retry in a few seconds" },
  ambiguous_host = { 400, "ambiguous_host",
    "the Host header must be a plain host name (no trailing dot, no empty label)" },
  ambiguous_body = { 400, "ambiguous_body",
    "the JSON body must name its \"model\" exactly once, spelled in lower case, as one UTF-8 JSON object" },
  length_required = { 411, "length_required",
    "this endpoint needs a Content-Length header: send the body in one piece, not chunked" },
  encoded_body = { 415, "unsupported_content_encoding",
    "this endpoint needs a body without Content-Encoding (no gzip, deflate, ...)" },
  route_not_allowed = { 403, "endpoint_not_exposed",
    "this endpoint is not exposed by the gateway" },
  method_not_allowed = { 403, "endpoint_not_exposed",
    "this method is not allowed on this endpoint" },
  path_not_normalized = { 403, "endpoint_not_exposed",
    "the request path must not contain '..', '//', '%2F' or similar" },
  route_not_allowed_for_key = { 403, "endpoint_not_allowed_for_key",
    "this API key may not use this endpoint: ask the gateway's operator to extend it" },
  missing_scope = { 403, "insufficient_scope",
    "this API key lacks the scope this endpoint needs: %s" },
  model_not_allowed = { 403, "model_not_allowed",
    "model %s is not allowed for this API key: use one the key allows" },
  model_not_found = { 404, "model_not_found",
    "model %s does not exist for this API key: list the models it may use (GET /v1/models)" },
  model_missing = { 400, "model_missing",
    "this API key may use only some models: name one in the JSON body's \"model\" field" },
  body_too_large = { 413, "body_too_large",
    "the request body is too large for this endpoint (at most %s bytes)" },
  body_too_large_for_model_check = { 413, "body_too_large",
    "the request body is too large for the gateway to check its model" },
  rate_limited = { 429, "rate_limited",
    "rate limit reached for this API key or address: retry in %s s" },
  token_budget_exhausted = { 429, "token_budget_exhausted",
    "the LLM token budget of this API key is used up: retry in %s s" },
  too_many_in_flight = { 429, "too_many_in_flight",
    "too many requests in flight for this API key: retry when one finishes" },
  too_many_key_checks = { 429, "too_many_key_checks",
    "too many different API keys from this address at once: retry in %s s" },
}

M.BY_STATUS = {
  [400] = { 400, "bad_request", "the gateway could not accept this request" },
  [401] = { 401, "invalid_api_key",
    "the API key is not valid: check it, or ask the gateway's operator for a new one" },
  [403] = { 403, "forbidden", "the gateway does not allow this request" },
  [404] = { 404, "not_found", "not found" },
  [413] = { 413, "body_too_large", "the request body is too large" },
  [429] = { 429, "rate_limited", "too many requests: retry in %s s" },
  [503] = { 503, "temporarily_unavailable",
    "the gateway cannot check requests right now; retry in a few seconds" },
}

-- Error types per dialect: what each vendor's own API answers with that
-- status (the SDKs pick their exception by status; the type is for people).
local ANTHROPIC_TYPES = {
  [400] = "invalid_request_error", [401] = "authentication_error",
  [403] = "permission_error", [404] = "not_found_error", [411] = "invalid_request_error", [413] = "request_too_large",
  [415] = "invalid_request_error",
  [429] = "rate_limit_error", [503] = "api_error",
}
local OPENAI_TYPES = {
  [400] = "invalid_request_error", [401] = "authentication_error",
  [403] = "permission_error", [404] = "invalid_request_error", [411] = "invalid_request_error", [413] = "invalid_request_error",
  [415] = "invalid_request_error",
  [429] = "rate_limit_error", [503] = "service_unavailable",
}

--- The API the client speaks: Anthropic's SDK also sends anthropic-version
--- on paths it shares with OpenAI (/v1/models).
function M.dialect(path, anthropic_version)
  path = path or ""
  if path == "/v1/messages" or path:sub(1, 13) == "/v1/messages/" or anthropic_version then
    return "anthropic"
  end
  if path:sub(1, 5) == "/api/" then
    return "ollama"
  end
  return "openai"
end

local ESCAPES = { ['"'] = '\\"', ["\\"] = "\\\\", ["\n"] = "\\n", ["\r"] = "\\r",
                  ["\t"] = "\\t" }

--- A JSON string literal. Text that is not valid UTF-8 (a model name is
--- client-controlled) has its non-ASCII bytes replaced, so the body always
--- parses.
function M.json_string(text)
  text = tostring(text)
  if not utf8.len(text) then
    text = text:gsub("[\128-\255]", "?")
  end
  return '"' .. text:gsub('[%c"\\]', function(c)
    return ESCAPES[c] or string.format("\\u%04x", c:byte())
  end) .. '"'
end

--- Client-controlled text shown back in a message: short and printable.
local function shown(text, limit)
  text = tostring(text):gsub("%c", "")
  if #text > limit then
    text = text:sub(1, limit) .. "..."
  end
  return text
end

--- Status, public code and message for a refusal. `vars` holds the agent's
--- variables without prefix (status, reason, detail, retry_after, ...) and
--- `deny`, the reason HAProxy refused by itself.
function M.denial(vars)
  local reason = vars.deny
  if not reason then
    reason = vars.decision and vars.reason or "agent_unavailable"
  end
  local entry = REASONS[reason] or M.BY_STATUS[tonumber(vars.status)] or M.BY_STATUS[403]
  local status, code, message = entry[1], entry[2], entry[3]
  if message:find("%%s") then
    local fill = vars.detail or ""
    if status == 429 then
      fill = tostring(vars.retry_after or 1)
    elseif reason == "model_not_allowed" or reason == "model_not_found" then
      fill = "'" .. shown(fill, 100) .. "'"
    end
    message = message:format(fill)
  end
  return status, code, message
end

--- The JSON body of a refusal in `dialect`.
function M.body(dialect, status, code, message)
  local msg = M.json_string(message)
  if dialect == "ollama" then
    return '{"error":' .. msg .. "}"
  end
  if dialect == "anthropic" then
    return '{"type":"error","error":{"type":' .. M.json_string(ANTHROPIC_TYPES[status] or "api_error")
      .. ',"message":' .. msg .. "}}"
  end
  return '{"error":{"message":' .. msg .. ',"type":'
    .. M.json_string(OPENAI_TYPES[status] or "api_error") .. ',"code":' .. M.json_string(code) .. "}}"
end

--- Rate-limit headers from the agent's figures: the IETF draft's
--- RateLimit-Policy / RateLimit, and the X-RateLimit-* most clients read.
--- Empty when the request had no limit.
function M.ratelimit_headers(vars)
  if vars.rl_limit == nil then
    return {}
  end
  local scope = '"' .. tostring(vars.rl_scope or "default") .. '"'
  return {
    { "RateLimit-Policy", scope .. ";q=" .. vars.rl_limit .. ";w=" .. (vars.rl_window or 0) },
    { "RateLimit", scope .. ";r=" .. (vars.rl_remaining or 0) .. ";t=" .. (vars.rl_reset or 0) },
    { "X-RateLimit-Limit", tostring(vars.rl_limit) },
    { "X-RateLimit-Remaining", tostring(vars.rl_remaining or 0) },
    { "X-RateLimit-Reset", tostring(vars.rl_reset or 0) },
  }
end

--- Every header of a refusal besides Content-Type.
function M.denial_headers(vars, status, code)
  local headers = { { "Cache-Control", "no-store" } }
  if status == 401 then
    -- RFC 6750 3: a bare challenge when no credential came, invalid_token
    -- when one did.
    local challenge = REALM
    if code ~= "missing_api_key" then
      challenge = challenge .. ', error="invalid_token"'
    end
    headers[#headers + 1] = { "WWW-Authenticate", challenge }
  elseif code == "insufficient_scope" then
    headers[#headers + 1] = { "WWW-Authenticate", REALM .. ', error="insufficient_scope", scope="'
      .. shown(vars.detail or "", 200):gsub('["\\]', "") .. '"' }
  elseif status == 429 then
    headers[#headers + 1] = { "Retry-After", tostring(vars.retry_after or 1) }
    for _, header in ipairs(M.ratelimit_headers(vars)) do
      headers[#headers + 1] = header
    end
  end
  return headers
end

-- Variables the agent sets (spoe-agent.conf: option var-prefix spoa).
M.RATELIMIT_VARS = { "retry_after", "rl_scope", "rl_limit", "rl_window", "rl_remaining",
                     "rl_reset" }
M.DENIAL_VARS = { "decision", "status", "reason", "detail", table.unpack(M.RATELIMIT_VARS) }

--- The agent's variables `names`, read through `get_var` (an applet's or a
--- txn's), and the reason HAProxy refused by itself.
function M.read_vars(get_var, names)
  local vars = {}
  for _, name in ipairs(names) do
    vars[name] = get_var("txn.spoa." .. name)
  end
  vars.deny = get_var("txn.gateway_deny")
  return vars
end

--- The list of models a key may use (the agent's `models`, one per line),
--- as the API of `path` lists models: what the gateway answers a key limited
--- to some models, instead of the upstream's whole list.
function M.model_list(models, path, anthropic_version)
  local names = {}
  for name in tostring(models or ""):gmatch("[^\n]+") do
    names[#names + 1] = M.json_string(name)
  end
  local items = {}
  local dialect = M.dialect(path, anthropic_version)
  for i, name in ipairs(names) do
    if dialect == "ollama" then
      items[i] = '{"name":' .. name .. ',"model":' .. name
        .. ',"modified_at":"1970-01-01T00:00:00Z","size":0,"digest":"","details":{}}'
    elseif dialect == "anthropic" then
      items[i] = '{"type":"model","id":' .. name .. ',"display_name":' .. name
        .. ',"created_at":"1970-01-01T00:00:00Z"}'
    else
      items[i] = '{"id":' .. name .. ',"object":"model","created":0,"owned_by":"spoa-agent"}'
    end
  end
  local list = "[" .. table.concat(items, ",") .. "]"
  if dialect == "ollama" then
    return '{"models":' .. list .. "}"
  elseif dialect == "anthropic" then
    return '{"data":' .. list .. ',"has_more":false,"first_id":' .. (names[1] or "null")
      .. ',"last_id":' .. (names[#names] or "null") .. "}"
  end
  return '{"object":"list","data":' .. list .. "}"
end

--- The whole refusal: status, headers (Content-Type included) and body.
function M.render(vars, path, anthropic_version)
  local status, code, message = M.denial(vars)
  local headers = M.denial_headers(vars, status, code)
  headers[#headers + 1] = { "Content-Type", "application/json" }
  return status, headers, M.body(M.dialect(path, anthropic_version), status, code, message)
end

if core then
  --- An applet's whole answer: status, headers, then the body.
  local function answer(applet, status, headers, body)
    applet:set_status(status)
    for _, header in ipairs(headers) do
      applet:add_header(header[1], header[2])
    end
    applet:add_header("Content-Length", tostring(#body))
    applet:start_response()
    applet:send(body)
  end

  local function applet_vars(applet, names)
    return M.read_vars(function(name) return applet:get_var(name) end, names)
  end

  core.register_service("spoa-deny", "http", function(applet)
    local anthropic = applet.headers["anthropic-version"]
    answer(applet, M.render(applet_vars(applet, M.DENIAL_VARS), applet.path,
      anthropic and anthropic[0]))
  end)

  core.register_service("spoa-models", "http", function(applet)
    local anthropic = applet.headers["anthropic-version"]
    local headers = { { "Content-Type", "application/json" }, { "Cache-Control", "no-store" } }
    for _, header in ipairs(M.ratelimit_headers(applet_vars(applet, M.RATELIMIT_VARS))) do
      headers[#headers + 1] = header
    end
    answer(applet, 200, headers, M.model_list(applet:get_var("txn.spoa.models"), applet.path,
      anthropic and anthropic[0]))
  end)

  core.register_action("spoa-ratelimit-headers", { "http-res" }, function(txn)
    local vars = M.read_vars(function(name) return txn:get_var(name) end, M.RATELIMIT_VARS)
    for _, header in ipairs(M.ratelimit_headers(vars)) do
      txn.http:res_set_header(header[1], header[2])
    end
  end, 0)
end

return M
