-- Open a session on an idle board in service and queue its build_and_program job.
-- In service: health good, or unknown (not checked yet: the worker checks the board
-- before it takes the build, as LAVA schedules onto devices of unknown health); a board
-- that is bad or in maintenance is refused.
-- ARGV: fpga_id job_id owner session_id session_ttl max_lifetime
--       filename design design_sha256 idem_key fingerprint idem_ttl
--       max_queued_per_board max_queued_per_caller
--       admin max_boards_per_caller storage_budget storage_window denied_tags
local id, job_id, owner, sid = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local ttl, max_life = tonumber(ARGV[5]), tonumber(ARGV[6])
local filename, design, sha = ARGV[7], ARGV[8], ARGV[9]
local idem_key, fingerprint, idem_ttl = ARGV[10], ARGV[11], tonumber(ARGV[12])
local per_board, per_caller = tonumber(ARGV[13]), tonumber(ARGV[14])
local admin, max_boards = ARGV[15], tonumber(ARGV[16])
local budget, window = tonumber(ARGV[17]), tonumber(ARGV[18])
local denied = ARGV[19] or ''

local missing = unknown_board(id)
if missing then return missing end
local replay = idem_lookup(idem_key, fingerprint)
if replay then return replay end

local b = board_key(id)
if denied ~= '' then
  local entry = cjson.decode(redis.call('HGET', INVENTORY, id))
  local have = tag_set(entry.tags)
  for tag in string.gmatch(denied, '[^,]+') do
    if have[tag] then
      return fail('tag_restricted', 'FPGA ' .. id .. ' is restricted (tag ' .. tag ..
        ') to other callers.')
    end
  end
end
local state = board_state(id)
if state ~= 'idle' then
  return fail('fpga_not_idle', 'FPGA ' .. id .. ' is ' .. state .. ', not idle.')
end
local health = hget(b, 'health') or 'unknown'
if health ~= 'good' and health ~= 'unknown' then
  local reason = hget(b, 'health_reason')
  local why = 'FPGA ' .. id .. ' is out of service: health is ' .. health
  if reason and reason ~= '' then why = why .. ' (' .. reason .. ')' end
  return fail('fpga_unavailable', why .. '.')
end
local full = queue_full(id, owner, per_board, per_caller)
if full then return full end

local t = now()
if admin ~= '1' then
  local refused = too_many_boards(owner, max_boards) or over_budget(owner, budget, window, t)
  if refused then return refused end
end
open_session(id, owner, sid, t, ttl, max_life)
set_current_job(id, job_id)
redis.call('SET', design_key(job_id), design)
charge(owner, #design, window, t)
local response = new_job(job_id, id, 'build_and_program', owner, sid, t,
  {filename = filename, design_size = #design, design_sha256 = sha})
response.session_id = sid
-- as stored: a JSON number keeps only 14 digits, 0.1 ms off the session's expires_at
response.expires_at = hget(b, 'session_expires_at')
idem_store(idem_key, fingerprint, idem_ttl, response)
return ok(response)
