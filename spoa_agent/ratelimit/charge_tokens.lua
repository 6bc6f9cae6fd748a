-- Charges a batch of answers' LLM tokens to their token budgets, once.
-- A budget is GCRA state like a rate limit's (gcra_batch.lua), in
-- microseconds: each token moves it on by the budget's interval. The check
-- before a request (gcra_batch.lua, interval 0) admits while at least one
-- token is left; a charge may take the state past that (the request was
-- admitted before its size was known): the key then waits until it refilled.
-- KEYS: the budgets the batch charges (one hash tag with the limiter: one slot).
-- ARGV: prefix of the charged markers, how long a marker is kept, the
--       batch's id, then per budget what it costs, in microseconds (the
--       agent summed the batch's answers per budget).
-- Returns 1 when charged now, 0 when the batch was charged before.
if not redis.call('SET', ARGV[1] .. ARGV[3], '1', 'NX', 'EX', tonumber(ARGV[2])) then
  return 0
end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
for i = 1, #KEYS do
  local cost = tonumber(ARGV[3 + i])
  if cost > 0 then
    local tat = math.max(tonumber(redis.call('GET', KEYS[i]) or now), now) + cost
    redis.call('SET', KEYS[i], string.format('%.0f', tat),
      'PX', math.max(1, math.ceil((tat - now) / 1000)))
  end
end
return 1
