-- Boards no live worker serves (their worker's lease lapsed: a host lost) are no longer
-- `good`: health `unknown`, saying why, so that they leave the pools' free boards and the
-- lab's view tells the truth. A worker that comes back checks its boards again.
-- ARGV: none. Returns the ids it marked.
local marked = {}
local t = nil
for _, id in ipairs(redis.call('HKEYS', INVENTORY)) do
  if redis.call('EXISTS', owner_key(id)) == 0 and hget(board_key(id), 'health') == 'good' then
    t = t or now()
    set_health(id, 'unknown', 'no live worker serves it (its host may be down)', t)
    marked[#marked + 1] = tonumber(id)
  end
end
return ok({marked = marked})
