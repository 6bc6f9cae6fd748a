-- GCRA over several limits at once, atomically: all admit and are charged,
-- or the request is refused and nothing is charged.
-- KEYS[i]: the i-th limit's key (all with one hash tag: one Cluster slot).
-- ARGV[2i-1]: emission interval in microseconds (period / N)
-- ARGV[2i]:   tolerance in microseconds (burst * interval)
-- Time comes from Redis, so agents with skewed clocks agree.
-- Returns "admitted, then per limit: remaining reset_us retry_us" as one
-- string of integers separated by spaces: one bulk reply for the client to
-- read instead of an array of 1 + 3n replies (reading those was the client's
-- largest cost per request).
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local tats, admitted = {}, 1
for i = 1, #KEYS do
  local tat = tonumber(redis.call('GET', KEYS[i]) or now)
  if tat < now then tat = now end
  tats[i] = tat
  if tat + tonumber(ARGV[2 * i - 1]) - now > tonumber(ARGV[2 * i]) then admitted = 0 end
end
local out = {admitted}
for i = 1, #KEYS do
  local interval, tolerance = tonumber(ARGV[2 * i - 1]), tonumber(ARGV[2 * i])
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
