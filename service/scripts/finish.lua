-- A worker ends a job it holds; applies the board event and health it reports.
-- Returns {stale = true} if the job is no longer this worker's (declared lost).
-- ARGV: job_id worker_id status event error result health health_reason retention
--       storage_window measured (JSON of the worker's timings, for GET /metrics; '': none)
--       waveform (a traced run's VCD; '': none), kept as long as the job
local job_id, wid, status, event = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local err, result, health, reason, retention = ARGV[5], ARGV[6], ARGV[7], ARGV[8], tonumber(ARGV[9])
local window = tonumber(ARGV[10])
local k = job_key(job_id)
preload(k, JOB_FIELDS)
if hget(k, 'status') ~= 'running' or hget(k, 'worker') ~= wid then
  return ok({stale = true})
end
local id = hget(k, 'fpga_id')
preload(board_key(id), BOARD_FIELDS)
local t = now()
hset(k, 'status', status, 'updated_at', t, 'finished_at', t)
job_ended(k, status)
record_measures(ARGV[11])
if err ~= '' then hset(k, 'error', err) end
if result ~= '' then hset(k, 'result', result) end
local waveform = ARGV[12] or ''
if waveform ~= '' then redis.call('SET', waveform_key(job_id), waveform, 'EX', retention) end
charge(hget(k, 'owner'), #err + #result + #waveform, window, t)
redis.call('ZREM', RUNNING, job_id)
drop_entry(id, hget(k, 'entry_id'))
finish_keys(job_id, retention)
local b = board_key(id)
if event ~= '' then transition(id, event, t) end
clear_current_job(id, job_id)
if health ~= '' then hset(b, 'health_checked_by', wid) end
if health ~= '' and hget(b, 'health') ~= 'maintenance' then
  set_health(id, health, reason, t)
end
job_event(job_id, id, status)
return ok({state = board_state(id)})
