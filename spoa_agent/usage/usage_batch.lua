-- Counts a batch of answers' usage, once (the usage store).
-- KEYS[1]: the names hash (it also routes the call on a Redis Cluster: every
--          key here shares its hash tag).
-- ARGV: prefix, how long a batch's id is kept (to count a batch sent again
--       once), the batch's id, then the roll-ups, each: its key (after the
--       prefix), its TTL, its number of fields F, then F field/amount pairs;
--       then "names" and principal/name pairs to the end.
-- The agent sums the batch's records per roll-up field: a batch is mostly a
-- few keys and models within one hour, so this is a few HINCRBYs a batch.
-- Returns 1 when counted now, 0 when the batch was counted before.
local prefix, keep, id = ARGV[1], tonumber(ARGV[2]), ARGV[3]
if not redis.call("SET", prefix .. "batch:" .. id, "1", "NX", "EX", keep) then
  return 0
end
local i = 4
while i <= #ARGV and ARGV[i] ~= "names" do
  local key, ttl, fields = prefix .. ARGV[i], tonumber(ARGV[i + 1]), tonumber(ARGV[i + 2])
  i = i + 3
  for _ = 1, fields do
    redis.call("HINCRBY", key, ARGV[i], ARGV[i + 1])
    i = i + 2
  end
  redis.call("EXPIRE", key, ttl)
end
i = i + 1
while i < #ARGV do
  redis.call("HSET", KEYS[1], ARGV[i], ARGV[i + 1])
  i = i + 2
end
return 1
