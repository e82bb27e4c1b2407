-- wrk script: POSTs kv gets over 100,000 keys, each with its correlation
-- (an envelope needs its "data" key, else the whole body is taken as data).
counter = 0
request = function()
  counter = counter + 1
  local body = '{"data":null,"meta":{"kv":{"get":"k' .. (counter % 100000) .. '"},"correlation":' .. counter .. '}}'
  return wrk.format("POST", "/", {["Content-Type"]="application/json"}, body)
end
