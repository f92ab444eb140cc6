-- Read boards in one call: per board [hash fields..., worker or false, inventory entry
-- or false]; ARGV the ids, or none: every board of the inventory, by id.
local ids = ARGV
if #ids == 0 then
  ids = redis.call('HKEYS', INVENTORY)
  for i, id in ipairs(ids) do ids[i] = tonumber(id) end
  table.sort(ids)
end
local out = {}
for i, id in ipairs(ids) do
  local holder = redis.call('GET', board_key(id) .. ':owner')
  out[i] = {id, redis.call('HGETALL', board_key(id)), holder,
            redis.call('HGET', INVENTORY, id)}
end
return out
