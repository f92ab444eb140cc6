-- Where a pool job stands: [queue_position, eta_seconds or false, boards], read in one
-- step. A waiting job: the jobs ahead of it in its pool's queue, and an estimate of
-- when it is placed: (position + 1) boards' turns, each the recent average time a board
-- stays taken, shared among the boards in service that meet it. A placed (or finished)
-- one: 0, 0. ARGV: job_id
local k = job_key(ARGV[1])
local req, member = hget(k, 'pool'), hget(k, 'pool_member')
if not req then return {false, false, 0} end
local boards = 0
for _, id in ipairs(all_meeting(req)) do
  local health = hget(board_key(id), 'health') or 'unknown'
  if health == 'good' or health == 'unknown' then boards = boards + 1 end
end
if not member then return {0, '0', boards} end
local position = redis.call('ZRANK', pool_key(req), member)
if not position then return {0, '0', boards} end
local turnaround = tonumber(redis.call('HGET', FAIR, 'turnaround') or '')
if not turnaround or boards == 0 then return {position, false, boards} end
return {position, tostring((position + 1) * turnaround / boards), boards}
