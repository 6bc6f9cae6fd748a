-- GCRA over several limits at once, atomically: all admit and are charged,
-- or the request is refused and nothing is charged.
-- KEYS[i]: the i-th limit's key (all with one hash tag: one Cluster slot).
-- ARGV[1]: per limit, "interval tolerance" in microseconds, all separated by
--   spaces: emission interval (period / N), tolerance (burst * interval). One
--   argument instead of two per limit: fewer for the client to encode.
-- Time comes from Redis, so agents with skewed clocks agree.
-- Returns "admitted, then per limit: remaining reset_us retry_us" as one
-- string of integers separated by spaces: one bulk reply for the client to
-- read instead of an array of 1 + 3n replies (reading those was the client's
-- largest cost per request).
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local rates = {}
for n in string.gmatch(ARGV[1], '%d+') do rates[#rates + 1] = tonumber(n) end
local tats, admitted = {}, 1
for i = 1, #KEYS do
  local tat = tonumber(redis.call('GET', KEYS[i]) or now)
  if tat < now then tat = now end
  tats[i] = tat
  if tat + rates[2 * i - 1] - now > rates[2 * i] then admitted = 0 end
end
local out = {admitted}
for i = 1, #KEYS do
  local interval, tolerance = rates[2 * i - 1], rates[2 * i]
  local tat = tats[i]
  local retry = math.max(0, tat + interval - now - tolerance)
  if admitted == 1 then
    tat = tat + interval
    redis.call('SET', KEYS[i], string.format('%.0f', tat), 'PX',
               math.ceil((tat - now) / 1000))
  end
  out[#out + 1] = math.max(0, math.floor((tolerance - (tat - now)) / interval))
  out[#out + 1] = tat - now
  out[#out + 1] = retry
end
for i = 1, #out do out[i] = string.format('%.0f', out[i]) end
return table.concat(out, ' ')
