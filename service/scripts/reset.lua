-- Reset a board: close its session, cancel its queued runs, queue a reset job.
-- mode 'reset' (POST reset), 'release' (POST session/release) or 'expire'
-- (housekeeping; caller is the expired session id and nothing else is checked).
-- ARGV: fpga_id job_id caller admin session_header mode retention
local id, job_id, caller, admin, header = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5]
local mode, retention = ARGV[6], tonumber(ARGV[7])
local b = board_key(id)
preload(b, BOARD_FIELDS)
local sid = hget(b, 'session_id')
local state = board_state(id)
local t = now()
if mode ~= 'expire' then
  local missing = unknown_board(id)
  if missing then return missing end
end

if mode == 'expire' then
  local expires = tonumber(hget(b, 'session_expires_at') or '0')
  if sid ~= caller then
    -- the session ended some other way; forget its expiry entry
    if not sid then redis.call('ZREM', EXPIRY, id) end
    return ok({action = 'gone'})
  end
  if expires > t then return ok({action = 'renewed', expires_at = expires}) end
  if state ~= 'reserved' and state ~= 'error' then
    return ok({action = 'wait', state = state})  -- retried once the build settles
  end
else
  if mode == 'release' and not sid then
    return fail('no_active_session', 'FPGA ' .. id .. ' has no active session.')
  end
  if state ~= 'reserved' and state ~= 'error' then
    return fail('fpga_not_resettable', 'FPGA ' .. id .. ' is ' .. state ..
      '; only a reserved or errored FPGA can be reset.')
  end
  local denied = check_owner(id, caller, admin, header)
  if denied ~= '' then return denied end
end

local reason = 'cancelled: FPGA ' .. id .. ' was reset'
if mode == 'expire' then reason = 'cancelled: the session expired' end
for _, queued in ipairs(redis.call('SMEMBERS', queued_key(id))) do
  cancel_job(queued, id, reason, t, retention)
end
local owner = caller
if mode == 'expire' then owner = hget(b, 'session_owner') or 'system' end
transition(id, 'reset', t)
close_session(id)
set_current_job(id, job_id)
local response = new_job(job_id, id, 'reset', owner, sid, t, {reason = mode})
response.action = 'reset'
return ok(response)
