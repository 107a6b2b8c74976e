-- Gives back what a decision took (src/quota/mod.rs): a request allowed by its global buckets
-- and then refused by its key's (another slot, another call) must not keep the global tokens.
-- GCRA's TAT is a sum of intervals, so taking one interval off again is exact whatever was
-- decided in between; a bucket that is full once more simply goes.
--
-- KEYS[1..]  the buckets' keys
-- ARGV[1]    the cost that was taken
-- ARGV[1+i]  bucket i's emission interval (µs)
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local cost = tonumber(ARGV[1])
for i = 1, #KEYS do
  local tat = tonumber(redis.call('GET', KEYS[i]) or '')
  if tat then
    local back = tat - tonumber(ARGV[i + 1]) * cost
    if back <= now then
      redis.call('DEL', KEYS[i])
    else
      local ttl_ms = math.ceil((back - now) / 1000)
      redis.call('SET', KEYS[i], string.format('%.0f', back), 'PX', string.format('%.0f', ttl_ms))
    end
  end
end
return 1
