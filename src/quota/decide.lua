-- One shared decision (src/quota/mod.rs): GCRA on Redis's clock, every bucket of the request
-- all or nothing, after the fleet-wide pause.
--
-- KEYS[1]    the account's pause key (its PTTL is the pause left)
-- KEYS[2..]  one key per bucket: its theoretical arrival time (TAT), integer µs on Redis's clock
-- ARGV[1]    the request's cost (tokens)
-- ARGV[2i], ARGV[2i+1]  bucket i's emission interval and tolerance (µs)
--
-- Returns {1, now, debt...} when every bucket allowed (and took its tokens), {0, wait_us,
-- debt...} otherwise (nothing written); {0, wait_us} alone while the account is paused. A
-- bucket's debt is how far its TAT is ahead of now (µs) after the decision: how much of its
-- capacity is in use, which seeds the pod's local share for when Redis stops answering. Times are integer µs; they stay exact in Lua's doubles up to 2^53 µs
-- (year 2255), and are written with %.0f because tostring keeps only 14 digits.
local pause = redis.call('PTTL', KEYS[1])
if pause > 0 then
  return {0, pause * 1000}
end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local cost = tonumber(ARGV[1])
local tats = {}
local debts = {}
local wait = 0
for i = 2, #KEYS do
  local interval = tonumber(ARGV[2 * i - 2])
  local tolerance = tonumber(ARGV[2 * i - 1])
  local tat = tonumber(redis.call('GET', KEYS[i]) or now) or now
  if tat < now then
    tat = now
  end
  local new_tat = tat + interval * cost
  -- Allowed while the bucket holds no more than tolerance + interval ahead of now: never
  -- more than `rate` in any window of `per` (the local GCRA's guarantee).
  local over = new_tat - now - tolerance - interval
  if over > wait then
    wait = over
  end
  tats[i] = new_tat
  debts[i - 1] = tat - now
end
if wait > 0 then
  -- A denied request moves no bucket: the others keep their capacity (QUOTAS.md's
  -- multi-bucket guard).
  local reply = {0, wait}
  for i = 1, #debts do
    reply[i + 2] = debts[i]
  end
  return reply
end
for i = 2, #KEYS do
  -- The key expires when the bucket is full again, so idle accounts vanish by themselves.
  local ttl_ms = math.ceil((tats[i] - now) / 1000)
  if ttl_ms < 1 then
    ttl_ms = 1
  end
  redis.call('SET', KEYS[i], string.format('%.0f', tats[i]), 'PX', string.format('%.0f', ttl_ms))
end
local reply = {1, now}
for i = 2, #KEYS do
  reply[i + 1] = tats[i] - now
end
return reply
