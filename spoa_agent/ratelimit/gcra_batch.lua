-- GCRA for a batch of requests in one call, in order, each all-or-nothing:
-- a request whose limits all admit is charged on all of them, else refused
-- and charged nothing; a later request sees what earlier ones were charged.
-- KEYS: every request's limit keys, request after request (one hash tag:
--   one Cluster slot).
-- ARGV[1]: per request "n interval1 tolerance1 ... intervaln tolerancen",
--   microseconds, all separated by spaces. An interval of 0 is a token
--   budget: it admits while its state is within its tolerance and is never
--   charged here (the tokens an answer used are charged after it, by
--   charge_tokens.lua).
-- Time comes from Redis, once per batch, so agents with skewed clocks agree.
-- Returns one string of integers: per request "admitted tightest remaining
-- reset_us", tightest being the 0-based index among its limits of the one
-- with the fewest requests remaining (the first of equals; n when all are
-- budgets), then, for a refused request only, "retry_us" per limit. Each key
-- is written once, at the end.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local args = {}
for n in string.gmatch(ARGV[1], '%d+') do args[#args + 1] = tonumber(n) end
local tat_of, dirty, out = {}, {}, {}
local k, a = 1, 1
while a <= #args do
  local n = args[a]
  local first = k
  local admitted = 1
  for i = 0, n - 1 do
    local key = KEYS[first + i]
    local tat = tat_of[key]
    if tat == nil then
      tat = tonumber(redis.call('GET', key) or now)
      tat_of[key] = tat
    end
    if tat < now then tat = now end
    if tat + args[a + 1 + 2 * i] - now > args[a + 2 + 2 * i] then admitted = 0 end
  end
  local tightest, fewest, reset, retries = n, nil, 0, {}
  for i = 0, n - 1 do
    local key, interval, tolerance = KEYS[first + i], args[a + 1 + 2 * i], args[a + 2 + 2 * i]
    local tat = math.max(tat_of[key], now)
    retries[i + 1] = math.max(0, tat + interval - now - tolerance)
    if interval > 0 then
      if admitted == 1 then
        tat = tat + interval
        tat_of[key] = tat
        dirty[key] = true
      end
      local remaining = math.max(0, math.floor((tolerance - (tat - now)) / interval))
      if fewest == nil or remaining < fewest then
        tightest, fewest, reset = i, remaining, tat - now
      end
    end
  end
  out[#out + 1] = admitted
  out[#out + 1] = tightest
  out[#out + 1] = fewest or 0
  out[#out + 1] = reset
  if admitted == 0 then
    for i = 1, n do out[#out + 1] = retries[i] end
  end
  k = first + n
  a = a + 1 + 2 * n
end
for key in pairs(dirty) do
  local tat = tat_of[key]
  redis.call('SET', key, string.format('%.0f', tat), 'PX', math.ceil((tat - now) / 1000))
end
for i = 1, #out do out[i] = string.format('%.0f', out[i]) end
return table.concat(out, ' ')
