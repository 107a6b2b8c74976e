-- wrk script: every request carries its own API key. Each wrk thread walks its own 50k
-- keys, so two threads (-t2) send 100k distinct keys. Used by keys_rss.sh and run.sh.
local counter = 0
id = 0
local threads = {}
function setup(thread) thread:set("id", #threads); table.insert(threads, thread) end
function request()
  counter = counter + 1
  local k = id * 1000000 + (counter % 50000)
  return wrk.format("GET", "/v1/numbers", { ["Authorization"] = "Bearer sk_live_" .. k })
end
