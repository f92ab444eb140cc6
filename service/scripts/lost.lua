-- Fail a running job whose worker is gone; the board goes to error, health unknown.
-- ARGV: job_id dead_worker_id message retention
local job_id, wid, message, retention = ARGV[1], ARGV[2], ARGV[3], tonumber(ARGV[4])
local k = job_key(job_id)
if hget(k, 'status') ~= 'running' then
  redis.call('ZREM', RUNNING, job_id)
  return ok({lost = false})
end
if hget(k, 'worker') ~= wid then return ok({lost = false}) end
local id = hget(k, 'fpga_id')
local t = now()
hset(k, 'status', 'failed', 'updated_at', t, 'finished_at', t, 'error', message)
job_ended(k, 'lost')
redis.call('ZREM', RUNNING, job_id)
drop_entry(id, hget(k, 'entry_id'))
finish_keys(job_id, retention)
local b = board_key(id)
transition(id, 'worker_lost', t)
clear_current_job(id, job_id)
if hget(b, 'health') ~= 'maintenance' then
  set_health(id, 'unknown', message, t)
end
job_event(job_id, id, 'failed')
return ok({lost = true, fpga_id = tonumber(id)})
