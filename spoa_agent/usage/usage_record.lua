-- Counts a batch of answers' usage, each exactly once (the usage store).
-- KEYS[1]: the names hash (it also routes the call on a Redis Cluster: every
--          key here shares its hash tag).
-- ARGV: prefix, hourly TTL, daily TTL, then 11 values per record:
--       id, hour, day, principal, name, model, status class, in, out, bytes, ms
-- Returns 1 per record counted now, 0 per record counted before (a resend).
local prefix, hour_ttl, day_ttl = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local sep = "\31"
local counted = {}
local i = 4
while i <= #ARGV do
  local id, hour, day = ARGV[i], ARGV[i + 1], ARGV[i + 2]
  local who, name, model, class = ARGV[i + 3], ARGV[i + 4], ARGV[i + 5], ARGV[i + 6]
  local fresh = redis.call("SET", prefix .. "seen:" .. id, "1", "NX", "EX", day_ttl)
  if fresh then
    local base = who .. sep .. model .. sep
    for _, bucket in ipairs({{prefix .. "h:" .. hour, hour_ttl}, {prefix .. "d:" .. day, day_ttl}}) do
      local key = bucket[1]
      redis.call("HINCRBY", key, base .. "requests", 1)
      redis.call("HINCRBY", key, base .. "s" .. class, 1)
      redis.call("HINCRBY", key, base .. "in", ARGV[i + 7])
      redis.call("HINCRBY", key, base .. "out", ARGV[i + 8])
      redis.call("HINCRBY", key, base .. "bytes", ARGV[i + 9])
      redis.call("HINCRBY", key, base .. "ms", ARGV[i + 10])
      redis.call("EXPIRE", key, bucket[2])
    end
    redis.call("HSET", KEYS[1], who, name)
    counted[#counted + 1] = 1
  else
    counted[#counted + 1] = 0
  end
  i = i + 11
end
return counted
