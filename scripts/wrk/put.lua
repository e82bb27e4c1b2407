-- wrk script: POSTs kv puts of 90-byte values over 100,000 keys, each with
-- its correlation. Each thread builds its requests once, in init, so that
-- the load generator, which shares the machine with the server, spends
-- little per request (about 6.6 µs against 7.2 µs when each request was
-- built in Lua as it was sent).
local keys = 100000
local reqs = {}
local counter = 0

function init(args)
  local value = string.rep("x", 90)
  for i = 1, keys do
    local body = '{"data":"' .. value .. '","meta":{"kv":{"put":"k' .. (i - 1) .. '"},"correlation":' .. i .. '}}'
    reqs[i] = wrk.format("POST", "/", {["Content-Type"]="application/json"}, body)
  end
end

function request()
  counter = counter + 1
  if counter > keys then counter = 1 end
  return reqs[counter]
end
