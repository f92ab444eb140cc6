-- Read boards in one call: per board [hash fields..., worker or false, inventory entry
-- or false]; ARGV the ids, or none: every board of the inventory, by id. The workers
-- and the inventory entries are read in bulk (MGET, HMGET / HGETALL), a few commands
-- for the lot; each board's hash is one HGETALL.
local ids, entries = ARGV, {}
if #ids == 0 then
  local flat = redis.call('HGETALL', INVENTORY)
  ids = {}
  for i = 1, #flat, 2 do
    ids[#ids + 1] = tonumber(flat[i])
    entries[#ids] = flat[i + 1]
  end
  local order = {}
  for i = 1, #ids do order[i] = i end
  table.sort(order, function(a, b) return ids[a] < ids[b] end)
  local sorted, sorted_entries = {}, {}
  for i, j in ipairs(order) do sorted[i], sorted_entries[i] = ids[j], entries[j] end
  ids, entries = sorted, sorted_entries
else
  entries = in_batches('HMGET', ids, function(id) return id end, INVENTORY)
end
local holders = in_batches('MGET', ids, owner_key)
local out = {}
for i, id in ipairs(ids) do
  out[i] = {id, redis.call('HGETALL', board_key(id)), holders[i], entries[i]}
end
return out
