-- One concurrency lease (src/quota/mod.rs): at most ARGV[1] live leases in the bucket's set.
--
-- KEYS[1]  the bucket's lease set: a sorted set, member = lease id, score = when the lease
--          expires (integer µs on Redis's clock)
-- ARGV[1]  the bucket's limit (N)
-- ARGV[2]  this lease's id
-- ARGV[3]  how long the lease lives at most (µs): the attempt's deadline
--
-- Returns {1, held} when granted (held = live leases now, this one included), {0, wait_us}
-- when full (wait_us = until the earliest live lease expires, an upper bound: a lease given
-- back sooner frees its slot sooner). Expired leases are dropped first, so a pod that died
-- holding leases leaks no slot past its requests' deadlines.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', string.format('%.0f', now))
local held = redis.call('ZCARD', KEYS[1])
if held >= tonumber(ARGV[1]) then
  local first = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
  local wait = 1000
  if first[2] then
    wait = math.max(1, tonumber(first[2]) - now)
  end
  return {0, wait}
end
local expires = now + tonumber(ARGV[3])
redis.call('ZADD', KEYS[1], string.format('%.0f', expires), ARGV[2])
-- The set lives as long as its longest lease, so an idle bucket vanishes by itself.
local last = redis.call('ZRANGE', KEYS[1], -1, -1, 'WITHSCORES')
local ttl_ms = math.ceil((tonumber(last[2]) - now) / 1000)
if ttl_ms < 1 then
  ttl_ms = 1
end
redis.call('PEXPIRE', KEYS[1], ttl_ms)
return {1, held + 1}
