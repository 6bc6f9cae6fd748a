-- Charges answers' LLM tokens to their token budgets, each answer once.
-- A budget is GCRA state like a rate limit's (gcra_batch.lua), in
-- microseconds: each token moves it on by the budget's interval. The check
-- before a request (gcra_batch.lua, interval 0) admits while at least one
-- token is left; a charge may take the state past that (the request was
-- admitted before its size was known): the key then waits until it refilled.
-- KEYS: each answer's budget key (one hash tag with the limiter: one slot).
-- ARGV: prefix of the charged markers, how long a marker is kept, then per
--       answer: its id (HAProxy's unique-id), microseconds per token, tokens.
-- Returns 1 per answer charged now, 0 per answer charged before (a resend).
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local marker, keep = ARGV[1], tonumber(ARGV[2])
local charged = {}
for i = 1, #KEYS do
  local a = 3 + 3 * (i - 1)
  if redis.call('SET', marker .. ARGV[a], '1', 'NX', 'EX', keep) then
    local cost = tonumber(ARGV[a + 1]) * tonumber(ARGV[a + 2])
    if cost > 0 then
      local tat = math.max(tonumber(redis.call('GET', KEYS[i]) or now), now) + cost
      redis.call('SET', KEYS[i], string.format('%.0f', tat),
        'PX', math.max(1, math.ceil((tat - now) / 1000)))
    end
    charged[#charged + 1] = 1
  else
    charged[#charged + 1] = 0
  end
end
return charged
