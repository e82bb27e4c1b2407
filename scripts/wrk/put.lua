-- wrk script: POSTs kv puts of 90-byte values over 100,000 keys, each with its correlation.
counter = 0
request = function()
  counter = counter + 1
  local body = '{"data":"' .. string.rep("x", 90) .. '","meta":{"kv":{"put":"k' .. (counter % 100000) .. '"},"correlation":' .. counter .. '}}'
  return wrk.format("POST", "/", {["Content-Type"]="application/json"}, body)
end
