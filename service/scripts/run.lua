-- Queue a Wishbone run job on a reserved board, for the session's owner.
-- ARGV: fpga_id job_id caller admin session_header request_json
--       idem_key fingerprint idem_ttl max_queued_per_board max_queued_per_caller
--       storage_budget storage_window
local id, job_id, caller, admin, header = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5]
local request = ARGV[6]
local idem_key, fingerprint, idem_ttl = ARGV[7], ARGV[8], tonumber(ARGV[9])
local per_board, per_caller = tonumber(ARGV[10]), tonumber(ARGV[11])
local budget, window = tonumber(ARGV[12]), tonumber(ARGV[13])

local missing = unknown_board(id)
if missing then return missing end
local replay = idem_lookup(idem_key, fingerprint)
if replay then return replay end

local state = board_state(id)
if state ~= 'reserved' then
  return fail('fpga_not_reserved', 'FPGA ' .. id .. ' is ' .. state .. ', not reserved.')
end
local denied = check_owner(id, caller, admin, header)
if denied ~= '' then return denied end
local t = now()
if session_expired(id, t) then
  return fail('fpga_not_reserved', 'The session of FPGA ' .. id ..
    ' has expired; the board is being reset.')
end
local full = queue_full(id, caller, per_board, per_caller)
if full then return full end
if admin ~= '1' then
  local over = over_budget(caller, budget, window, t)
  if over then return over end
end

local sid = hget(board_key(id), 'session_id')
local response = new_job(job_id, id, 'run', caller, sid, t, {request = request})
charge(caller, #request, window, t)
response.session_id = sid
idem_store(idem_key, fingerprint, idem_ttl, response)
return ok(response)
