-- Cancel a job that no worker has taken yet; a cancelled build frees the board.
-- ARGV: fpga_id job_id caller admin session_header retention
local id, job_id, caller, admin, header = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5]
local retention = tonumber(ARGV[6])
local k = job_key(job_id)
if hget(k, 'fpga_id') ~= id then
  return fail('job_not_found', 'FPGA ' .. id .. ' has no job ' .. job_id .. '.')
end
if admin ~= '1' and hget(k, 'owner') ~= caller then
  return fail('not_session_owner', 'Job ' .. job_id .. ' belongs to another caller.')
end
-- a job's session is the one acted on (the routes reading a job check the same)
local sid = hget(k, 'session_id')
if header ~= '' and sid and header ~= sid then
  return fail('session_mismatch', 'X-Session-ID does not match the session of job ' ..
    job_id .. '.')
end
local status, jtype = hget(k, 'status'), hget(k, 'type')
if status ~= 'queued' then
  return fail('job_not_cancellable', 'Job ' .. job_id .. ' is ' .. status ..
    '; only a queued job can be cancelled.')
end
if jtype == 'reset' then
  return fail('job_not_cancellable', 'Job ' .. job_id ..
    ' is a reset; a reset cannot be cancelled once requested.')
end
local t = now()
cancel_job(job_id, id, 'cancelled by ' .. caller, t, retention)
if jtype == 'build_and_program' then
  transition(id, 'cancel_build', t)
  close_session(id)
  clear_current_job(id, nil)
end
return ok({job_id = job_id, status = 'cancelled'})
