-- Counts a batch of answers' usage, each exactly once (the usage store).
-- KEYS[1]: the names hash (it also routes the call on a Redis Cluster: every
--          key here shares its hash tag).
-- ARGV: prefix, hourly TTL, daily TTL, how long a record's id is kept (to
--       count a record sent again once), then 11 values per record:
--       id, hour, day, principal, name, model, status class, in, out, bytes, ms
-- Returns 1 per record counted now, 0 per record counted before (a resend).
-- The sums of the batch's new records are added once per roll-up field: a
-- batch is mostly the same few keys and models within one hour.
local prefix, hour_ttl, day_ttl = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local seen_ttl = tonumber(ARGV[4])
local sep = "\31"
local counted = {}
local sums = {} -- roll-up key -> field -> amount
local ttls = {} -- roll-up key -> its TTL
local names = {}
local function add(key, ttl, field, amount)
  local fields = sums[key]
  if fields == nil then
    fields = {}
    sums[key] = fields
    ttls[key] = ttl
  end
  fields[field] = (fields[field] or 0) + amount
end
local i = 5
while i <= #ARGV do
  local id, hour, day = ARGV[i], ARGV[i + 1], ARGV[i + 2]
  local who, name, model, class = ARGV[i + 3], ARGV[i + 4], ARGV[i + 5], ARGV[i + 6]
  if redis.call("SET", prefix .. "seen:" .. id, "1", "NX", "EX", seen_ttl) then
    local base = who .. sep .. model .. sep
    for _, bucket in ipairs({ { prefix .. "h:" .. hour, hour_ttl }, { prefix .. "d:" .. day, day_ttl } }) do
      add(bucket[1], bucket[2], base .. "requests", 1)
      add(bucket[1], bucket[2], base .. "s" .. class, 1)
      add(bucket[1], bucket[2], base .. "in", tonumber(ARGV[i + 7]))
      add(bucket[1], bucket[2], base .. "out", tonumber(ARGV[i + 8]))
      add(bucket[1], bucket[2], base .. "bytes", tonumber(ARGV[i + 9]))
      add(bucket[1], bucket[2], base .. "ms", tonumber(ARGV[i + 10]))
    end
    names[who] = name
    counted[#counted + 1] = 1
  else
    counted[#counted + 1] = 0
  end
  i = i + 11
end
for key, fields in pairs(sums) do
  for field, amount in pairs(fields) do
    redis.call("HINCRBY", key, field, amount)
  end
  redis.call("EXPIRE", key, ttls[key])
end
for who, name in pairs(names) do
  redis.call("HSET", KEYS[1], who, name)
end
return counted
