-- spoa_usage.lua: the LLM usage of every answer to an allowed request with a
-- principal (API key or JWT), as the upstream itself reports it, sent to the
-- agent, which keeps the sums per principal and model in Redis.
--
-- A filter (haproxy.cfg: `filter lua.spoa-usage`) reads each answer as it
-- streams by, without holding it back: it keeps the last numbers it saw
--   OpenAI          "prompt_tokens", "completion_tokens" (non-streamed; streamed
--                   only when the request asked for stream_options.include_usage)
--   OpenAI Responses, Anthropic   "input_tokens", "output_tokens" (Anthropic
--                   streams input in message_start, the output's running total
--                   in message_delta: the last value is the total)
--   Ollama          "prompt_eval_count", "eval_count" (the final, done object)
-- and the first "model". When the answer ends, one record goes into a queue;
-- a task sends the queue to the agent (USAGE_ADDR, 127.0.0.1:12346 by
-- default) as `batch N ID` and N JSON lines, and drops the records only once
-- the agent answered `ok N` (they are in Redis). A batch is sent again as it
-- was, with the same ID (its first record's id, HAProxy's unique-id), until
-- it is answered: the agent counts a batch sent twice once. While the agent
-- is away the records wait here, up to MAX_QUEUE.
--
-- A JSON string cannot hold an unescaped quote, so text the model writes
-- (always inside strings) cannot fake a `"prompt_tokens":` with its quotes.

local MAX_QUEUE = 100000 -- records; beyond, the oldest are dropped (and counted)
local BATCH = 500
local TAIL = 64 -- bytes of what came before a chunk, scanned again with it:
                -- a number or name split across two chunks is read whole

local COUNTS = {
  { "input", '"prompt_tokens"%s*:%s*(%d+)' },
  { "output", '"completion_tokens"%s*:%s*(%d+)' },
  { "input", '"input_tokens"%s*:%s*(%d+)' },
  { "output", '"output_tokens"%s*:%s*(%d+)' },
  { "input", '"prompt_eval_count"%s*:%s*(%d+)' },
  { "output", '"eval_count"%s*:%s*(%d+)' },
}
local MODEL = '"model"%s*:%s*"([^"\\]*)"'

local usage = {}

-- Scans one piece of an answer (with the previous piece's tail) into `seen`.
function usage.scan(seen, text)
  -- Most pieces of a streamed answer are text deltas: one plain search
  -- (every name above has "_count" or "_tokens" in it) skips the patterns.
  if not (text:find("_tokens", 1, true) or text:find("_count", 1, true)) then
    if seen.model == nil then
      seen.model = text:match(MODEL)
    end
    return
  end
  for _, count in ipairs(COUNTS) do
    for n in text:gmatch(count[2]) do
      seen[count[1]] = tonumber(n)
    end
  end
  if seen.model == nil then
    seen.model = text:match(MODEL)
  end
end

-- Counts `needle` in `text` from `from` on (plain text, no pattern).
local function count(text, needle, from, n)
  local at = text:find(needle, from, true)
  while at do
    n = n + 1
    at = text:find(needle, at + #needle, true)
  end
  return n
end

-- Feeds the next piece of an answer, as it streams by. Besides the usage,
-- counts the stream's events (SSE "data:" lines) and lines (NDJSON): what
-- estimate() falls back on when a stream reports no usage.
function usage.feed(seen, chunk)
  local tail = seen.tail or ""
  local text = tail .. chunk
  usage.scan(seen, text)
  -- A "data:" that ends in this chunk, even one begun in the tail, once.
  seen.events = count(text, "data:", math.max(1, #tail - 3), seen.events or 0)
  -- Anthropic's message_start already says "output_tokens": 1; the total
  -- comes in message_delta, at the end. Until then the output is not known.
  if seen.output_known == nil and text:find('"message_start"', 1, true) then
    seen.output_known = false
  end
  if text:find('"message_delta"', 1, true) then
    seen.output_known = true
  end
  seen.lines = count(chunk, "\n", 1, seen.lines or 0)
  seen.tail = text:sub(-TAIL)
end

-- The usage of a streamed answer that did not report it all: an OpenAI
-- stream whose client did not ask for usage, or any stream cut short
-- (usage comes last). Estimated, so that no stream is free: an output token
-- per event (SSE) or line (NDJSON), which is how these servers stream; an
-- input token per 4 bytes of the request's body. An answer that is not a
-- stream (one line) reports its usage or is no LLM call: left as reported.
function usage.estimate(seen, request_bytes)
  local streamed = (seen.events or 0) > 1 or (seen.lines or 0) > 1
  if not streamed then
    return
  end
  if seen.output == nil or seen.output_known == false then
    local estimate = (seen.events or 0) > 1 and seen.events or seen.lines
    seen.output = math.max(seen.output or 0, estimate)
  end
  if seen.input == nil then
    seen.input = math.ceil((tonumber(request_bytes) or 0) / 4)
  end
end

local function quoted(s)
  return '"' .. tostring(s):gsub('[%c"\\]', function(c)
    return string.format("\\u%04x", c:byte())
  end) .. '"'
end

-- One record, a JSON object on one line. `budget`: the token budget the
-- agent named when it admitted the request (txn.spoa.budget), or nil.
function usage.record(id, key, name, seen, status, size, ms, ts, budget)
  local line = string.format(
    '{"id":%s,"key":%s,"name":%s,"model":%s,"status":%d,"in":%d,"out":%d,"bytes":%d,"ms":%d,"ts":%d',
    quoted(id), quoted(key), quoted(name), quoted(seen.model or ""), status,
    seen.input or 0, seen.output or 0, size, ms, ts)
  if budget ~= nil then
    line = line .. ',"budget":' .. quoted(budget)
  end
  return line .. "}"
end

-- The queue: records from `first` to `last`.
-- `ids`: each record's id. `sending`: how many records from `first` on make
-- the batch on its way, which stays as it is until the agent has it.
local queue, ids, first, last, dropped, sending = {}, {}, 1, 0, 0, 0
-- The filters of the answers being counted now. While there are any, the
-- sender keeps its connection to the agent, and that connection keeps this
-- process alive after a reload until their records are sent (an old process
-- leaves once its last stream ends, and the sender's connection is one).
-- Weak keys: a filter whose end_analyze never ran (if HAProxy ever skipped
-- it) leaves with its stream at the next collection, and cannot hold an old
-- process forever.
local counting = setmetatable({}, { __mode = "k" })

local function push(line, id)
  if last - first + 1 >= MAX_QUEUE then
    dropped = dropped + 1 -- full (the agent long away): this one is not kept
    return
  end
  last = last + 1
  queue[last], ids[last] = line, id
end

local function millis()
  local now = core.now()
  return now.sec * 1000 + now.usec // 1000
end

local Filter = {}
Filter.id = "spoa-usage"
Filter.flags = filter and filter.FLT_CFG_FL_HTX -- nil outside HAProxy (tests)
Filter.__index = Filter

function Filter:new()
  return setmetatable({ started = millis(), seen = {}, size = 0 }, Filter)
end

function Filter:start_analyze(txn, chn)
  -- Only answers to allowed requests with a principal are counted.
  if chn:is_resp() and txn:get_var("txn.spoa.decision") == "allow"
      and txn:get_var("txn.spoa.principal_id") ~= nil then
    self.counted = true
    counting[self] = true
    filter.register_data_filter(self, chn)
  end
end

function Filter:http_payload(txn, http_msg)
  local body = http_msg:body()
  if body == nil or #body == 0 then
    return
  end
  self.size = self.size + #body
  -- Counting must never cost the client its answer: an error here is
  -- HAProxy's to log, the answer goes on.
  local ok, err = pcall(usage.feed, self.seen, body)
  if not ok then
    core.Warning("spoa-usage: " .. tostring(err))
  end
end

function Filter:end_analyze(txn, chn)
  if not (self.counted and chn:is_resp()) then
    return
  end
  counting[self] = nil
  local ok, err = pcall(function()
    local ended = millis()
    usage.estimate(self.seen, txn:get_var("txn.request_bytes"))
    local id = txn.f:unique_id() or ""
    push(usage.record(id, txn:get_var("txn.spoa.principal_id"),
      txn:get_var("txn.spoa.principal") or "", self.seen, tonumber(txn.f:status()) or 0,
      self.size, ended - self.started, ended // 1000, txn:get_var("txn.spoa.budget")), id)
  end)
  if not ok then
    core.Warning("spoa-usage: " .. tostring(err))
  end
end

-- The sender: one connection to the agent, a batch at a time.
local function sender()
  local host, port = (os.getenv("USAGE_ADDR") or "127.0.0.1:12346"):match("^(.*):(%d+)$")
  local sock = nil
  local idle_turns = 0

  local function connect()
    if sock == nil then
      sock = core.tcp()
      sock:settimeout(5)
      if not sock:connect(host, tonumber(port)) then
        sock = nil
      end
    end
    return sock ~= nil
  end

  local function disconnect()
    if sock ~= nil then
      sock:close()
      sock = nil
    end
  end

  while true do
    if dropped > 0 then
      core.Warning(string.format("spoa-usage: %d records dropped (queue full)", dropped))
      dropped = 0
    end
    -- The batch on its way, else a new one from the queue.
    local n = sending > 0 and sending or math.min(last - first + 1, BATCH)
    if n <= 0 then
      if next(counting) == nil then
        -- Idle: no connection left open. An open one would keep an old
        -- HAProxy process alive after a reload for good.
        disconnect()
      else
        -- Answers in flight: be connected when they end (see `counting`).
        connect()
        idle_turns = idle_turns + 1
        if idle_turns % 20 == 0 then
          collectgarbage("step") -- lets `counting` drop filters of ended streams
        end
      end
      core.msleep(50)
    else
      idle_turns = 0
      local answer = nil
      sending = n
      if connect() then
        -- haproxy.cfg's unique-id-format names every request; without it,
        -- a name this sender makes (unique enough within a process).
        if ids[first] == "" then
          local now = core.now()
          ids[first] = string.format("noid-%d-%d-%d", now.sec, now.usec, first)
        end
        local lines = { "batch " .. n .. " " .. ids[first] }
        for i = first, first + n - 1 do
          lines[#lines + 1] = queue[i]
        end
        if sock:send(table.concat(lines, "\n") .. "\n") then
          answer = sock:receive("*l")
        end
      end
      if answer == "ok " .. n then
        for i = first, first + n - 1 do
          queue[i], ids[i] = nil, nil
        end
        first, sending = first + n, 0
      else
        -- The agent or Redis is away: keep the batch as it is (same records,
        -- same id), try again in a second.
        disconnect()
        core.msleep(1000)
      end
    end
  end
end

if core ~= nil and core.register_filter ~= nil then
  core.register_filter("spoa-usage", Filter, function(f, args) return f end)
  core.register_task(sender)
end

return usage
