-- Cancel a pool job that no board has taken yet: it leaves its pool's queue. One
-- already placed is answered {placed = fpga_id}: the caller cancels it on its board
-- (cancel.lua), as any job there.
-- ARGV: job_id caller admin retention
local job_id, caller, admin, retention = ARGV[1], ARGV[2], ARGV[3], tonumber(ARGV[4])
local k = job_key(job_id)
local owner = hget(k, 'owner')
if not owner then return fail('job_not_found', 'There is no job ' .. job_id .. '.') end
if admin ~= '1' and owner ~= caller then
  return fail('not_session_owner', 'Job ' .. job_id .. ' belongs to another caller.')
end
local placed = hget(k, 'fpga_id')
if placed then return ok({placed = tonumber(placed)}) end
local status = hget(k, 'status')
if status ~= 'queued' then
  return fail('job_not_cancellable', 'Job ' .. job_id .. ' is ' .. status ..
    '; only a queued job can be cancelled.')
end
local req, member = hget(k, 'pool'), hget(k, 'pool_member')
redis.call('ZREM', pool_key(req), member)
if redis.call('ZCARD', pool_key(req)) == 0 then redis.call('SREM', POOLS, req) end
redis.call('SREM', caller_waiting_key(owner), job_id)
redis.call('SREM', caller_queued_key(owner), job_id)
local t = now()
hset(k, 'status', 'cancelled', 'updated_at', t, 'finished_at', t,
  'error', 'cancelled before a board took it')
hdel(k, 'pool_member')
finish_keys(job_id, retention)
job_ended(k, 'cancelled')
job_event(job_id, nil, 'cancelled')
return ok({cancelled = true})
