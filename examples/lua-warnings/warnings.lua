-- One report: {"player": "...", "reason": "..."}.
local player = event.data.player
if type(player) ~= "string" or player == "" then
  error("data.player must be a non-empty string")
end
local key = "warnings_" .. player

local n, err = kv.increment(key)
if not n then error(err) end

if n == 1 then
  emit("actions", {action = "warn", player = player, reason = event.data.reason})
elseif n == 2 then
  emit("actions", {action = "final_warning", player = player, reason = event.data.reason})
else
  -- Third strike: ban, and reset the count in the same atomic step.
  assert(kv.delete(key))
  local bans = assert(kv.increment("bans_" .. player))
  emit("actions", {action = "ban", player = player, reason = event.data.reason, bans = bans})
end
