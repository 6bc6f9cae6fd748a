-- Swap a key's secret hash, keeping the old one valid until a time (or not).
-- KEYS[1]: the key's record. ARGV[1]: new hash; ARGV[2]: grace end (unix
-- time), or "" for no grace. Returns 0 when the key does not exist.
local old = redis.call('HGET', KEYS[1], 'hash')
if not old then
  return 0
end
redis.call('HSET', KEYS[1], 'hash', ARGV[1])
if ARGV[2] == '' then
  redis.call('HDEL', KEYS[1], 'prev_hash', 'prev_hash_until')
else
  redis.call('HSET', KEYS[1], 'prev_hash', old, 'prev_hash_until', ARGV[2])
end
return 1
