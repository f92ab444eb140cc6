-- Read boards in one call: [[hash fields...], worker or false] per id in ARGV.
local out = {}
for i, id in ipairs(ARGV) do
  local holder = redis.call('GET', board_key(id) .. ':owner')
  out[i] = {redis.call('HGETALL', board_key(id)), holder}
end
return out
