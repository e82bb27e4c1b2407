-- One chat message: {"player": "...", "ts": UNIX_SECONDS, "text": "..."}.
local LIMIT, WINDOW = 3, 10
local player, ts = event.data.player, event.data.ts
if type(player) ~= "string" or type(ts) ~= "number" then
  error("data.player (string) and data.ts (number) are required")
end
local key = "chat_" .. player

-- Keep the timestamps still inside the window ending now.
local recent = {}
for _, t in ipairs(kv.get(key, {})) do
  if t > ts - WINDOW then recent[#recent + 1] = t end
end

if #recent >= LIMIT then
  emit("actions", {action = "mute", player = player, seconds = recent[1] + WINDOW - ts})
  return
end
recent[#recent + 1] = ts
assert(kv.set(key, recent, WINDOW))
emit("out")
