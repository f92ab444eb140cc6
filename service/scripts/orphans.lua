-- Boards no live worker serves (their worker's lease lapsed: a host lost) are no longer
-- `good`: health `unknown`, saying why, so that they leave the pools' free boards and the
-- lab's view tells the truth. A worker that comes back checks its boards again.
-- ARGV: none. Returns the ids it marked.
-- The leases are read in bulk (MGET): a few commands per pass, not one per board.
local marked = {}
local t = nil
local ids = redis.call('HKEYS', INVENTORY)
local holders = in_batches('MGET', ids, owner_key)
for i, id in ipairs(ids) do
  if not holders[i] and hget(board_key(id), 'health') == 'good' then
    t = t or now()
    set_health(id, 'unknown', 'no live worker serves it (its host may be down)', t)
    marked[#marked + 1] = tonumber(id)
  end
end
return ok({marked = marked})
