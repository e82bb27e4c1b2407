-- One kill: {"player": "...", "ts": UNIX_SECONDS}.
local e = event.data
if type(e.player) ~= "string" or type(e.ts) ~= "number" then
  error("data.player (string) and data.ts (number) are required")
end
local day = os.date("!%Y-%m-%d", e.ts)

local cleared = 0
if kv.get("day") ~= day then
  cleared = kv.clear("daily/")
  assert(kv.set("day", day))
end
local kills = assert(kv.increment("daily/" .. e.player))
emit("out", {player = e.player, day = day, kills_today = kills, reset = cleared > 0 and cleared or nil})
