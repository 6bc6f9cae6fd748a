-- Record when a key was last used, without recreating a key that was deleted
-- meanwhile (a bare HSET would). KEYS[1]: the key's record; ARGV[1]: unix time.
if redis.call('EXISTS', KEYS[1]) == 1 then
  redis.call('HSET', KEYS[1], 'last_used_at', ARGV[1])
  return 1
end
return 0
