-- A worker takes a job it read from the board's queue: queued -> running.
-- Returns the job record, or {skip = reason} (the entry dropped unless the lease is lost).
-- ARGV: fpga_id job_id worker_id entry_id retention lease_ms
local id, job_id, wid, entry, retention = ARGV[1], ARGV[2], ARGV[3], ARGV[4], tonumber(ARGV[5])
local lease_ms = ARGV[6]
local k = job_key(job_id)
local lease = owner_key(id)
local holder = redis.call('GET', lease)
if holder == false then
  -- the lease lapsed while nobody else wanted the board (Redis was away): renew it
  redis.call('SET', lease, wid, 'PX', lease_ms)
elseif holder ~= wid then
  -- another worker took the board over (this one was frozen, say): leave the entry
  -- pending for the new holder, which adopts it
  return ok({skip = 'lease lost'})
end
preload(k, JOB_FIELDS)
local status = hget(k, 'status')
if status == 'running' and hget(k, 'worker') == wid then
  -- this worker took it already and lost the answer with its connection: it asks again
  return ok({job = redis.call('HGETALL', k)})
end
if status ~= 'queued' then
  drop_entry(id, entry)
  return ok({skip = 'job is ' .. (status or 'gone')})
end
local t = now()
local jtype = hget(k, 'type')
preload(board_key(id), BOARD_FIELDS)
local state = board_state(id)
local expected = {build_and_program = 'queued', run = 'reserved', reset = 'resetting'}
if state ~= expected[jtype] then
  -- e.g. runs queued behind a run that faulted the board
  hset(k, 'status', 'failed', 'updated_at', t, 'finished_at', t,
    'error', 'FPGA ' .. id .. ' is ' .. state .. ' and can no longer run this job.')
  unqueue(job_id, id)
  drop_entry(id, entry)
  finish_keys(job_id, retention)
  job_ended(k, 'failed')
  job_event(job_id, id, 'failed')
  return ok({skip = 'board is ' .. state})
end
if jtype == 'build_and_program' and hget(board_key(id), 'health') == 'bad' then
  -- accepted while the board was not checked yet (health unknown), and its check failed:
  -- the build fails before it starts, the board is free again (out of service)
  local reason = hget(board_key(id), 'health_reason') or ''
  if reason ~= '' then reason = ' (' .. reason .. ')' end
  hset(k, 'status', 'failed', 'updated_at', t, 'finished_at', t,
    'error', 'FPGA ' .. id .. ' failed its health check before the build began' .. reason ..
    '; the session is closed.')
  unqueue(job_id, id)
  drop_entry(id, entry)
  finish_keys(job_id, retention)
  job_ended(k, 'failed')
  transition(id, 'check_fail', t)
  close_session(id)
  clear_current_job(id, nil)
  job_event(job_id, id, 'failed')
  return ok({skip = 'board failed its health check'})
end
hset(k, 'status', 'running', 'updated_at', t, 'started_at', t, 'worker', wid)
observe('queue_wait', jtype, t - (tonumber(hget(k, 'created_at')) or t))
unqueue(job_id, id)
redis.call('ZADD', RUNNING, t, job_id)
if jtype == 'build_and_program' then transition(id, 'build_start', t) end
set_current_job(id, job_id)
job_event(job_id, id, 'running')
local record = redis.call('HGETALL', k)
return ok({job = record})
