-- One game event: {"type": "connect"|"kill"|"disconnect", "player": "...", "ts": UNIX_SECONDS}.
local KEEP = 10
local e = event.data
if type(e.player) ~= "string" or type(e.ts) ~= "number" then
  error("data.player (string) and data.ts (number) are required")
end
if e.type ~= "connect" and e.type ~= "kill" and e.type ~= "disconnect" then
  error("unknown event type " .. tostring(e.type))
end
local key = "session_" .. e.player

if e.type == "connect" then
  assert(kv.set(key, {start = e.ts, kills = 0}))
  emit("out", {player = e.player, session = "open", start = e.ts})
  return
end

local s = kv.get(key)
if not s then error("no open session for " .. e.player) end

if e.type == "kill" then
  s.kills = s.kills + 1
  assert(kv.set(key, s))
  return -- nothing to report
elseif e.type == "disconnect" then
  s["end"], s.duration = e.ts, e.ts - s.start
  local archive = kv.get("sessions_" .. e.player, {})
  table.insert(archive, 1, s)
  while #archive > KEEP do table.remove(archive) end
  assert(kv.set("sessions_" .. e.player, archive))
  assert(kv.delete(key))
  emit("out", {player = e.player, session = s, archived = #archive, oldest_start = archive[#archive].start})
end
