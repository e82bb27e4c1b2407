-- wrk script: POSTs kv gets over 100,000 keys, each with its correlation
-- (an envelope needs its "data" key, else the whole body is taken as data).
-- Each thread builds its requests once, in init (see put.lua).
local keys = 100000
local reqs = {}
local counter = 0

function init(args)
  for i = 1, keys do
    local body = '{"data":null,"meta":{"kv":{"get":"k' .. (i - 1) .. '"},"correlation":' .. i .. '}}'
    reqs[i] = wrk.format("POST", "/", {["Content-Type"]="application/json"}, body)
  end
end

function request()
  counter = counter + 1
  if counter > keys then counter = 1 end
  return reqs[counter]
end
