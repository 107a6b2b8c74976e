-- A fleet-wide pause (src/quota/mod.rs): KEYS[1] = the account's pause key, ARGV[1] = ms.
-- Only ever lengthens a pause: a shorter hint from another replica must not cut one short.
local left = redis.call('PTTL', KEYS[1])
local ms = tonumber(ARGV[1])
if left < ms then
  redis.call('SET', KEYS[1], '1', 'PX', ARGV[1])
end
return 1
