-- Extend the board's session by `seconds`, never past its hard maximum lifetime.
-- ARGV: fpga_id caller admin session_header seconds
local id, caller, admin, header, seconds = ARGV[1], ARGV[2], ARGV[3], ARGV[4], tonumber(ARGV[5])
local missing = unknown_board(id)
if missing then return missing end
local b = board_key(id)
if not hget(b, 'session_id') then
  return fail('no_active_session', 'FPGA ' .. id .. ' has no active session.')
end
local denied = check_owner(id, caller, admin, header)
if denied ~= '' then return denied end
local t = now()
if session_expired(id, t) then
  return fail('no_active_session', 'The session of FPGA ' .. id ..
    ' has expired; the board is being reset.')
end
local current = tonumber(hget(b, 'session_expires_at'))
local limit = tonumber(hget(b, 'session_max_expires_at'))
local wanted = t + seconds
if wanted > limit then wanted = limit end
if current >= limit then
  return fail('session_renew_limit', 'The session of FPGA ' .. id ..
    ' has reached its maximum lifetime and cannot be extended.')
end
if wanted <= current then return ok({expires_at = current}) end  -- never shortens
hset(b, 'session_expires_at', wanted)
redis.call('ZADD', EXPIRY, wanted, id)
board_event(id, {session = 'renewed', session_expires_at = wanted})
return ok({expires_at = wanted})
