-- The replica heartbeat (src/quota/heartbeat.rs): KEYS[1] = the sorted set of replicas,
-- ARGV[1] = this replica's id, ARGV[2] = how long a member stays live (ms).
-- Scores are Redis's clock in ms, so replicas with skewed clocks still agree.
local t = redis.call('TIME')
local now_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local live_ms = tonumber(ARGV[2])
redis.call('ZADD', KEYS[1], string.format('%.0f', now_ms), ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', string.format('(%.0f', now_ms - live_ms))
-- The set lives on only while someone heartbeats into it.
redis.call('PEXPIRE', KEYS[1], string.format('%.0f', live_ms * 2))
return redis.call('ZCARD', KEYS[1])
