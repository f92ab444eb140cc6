-- Set a board's health. mode 'check' (a worker's check: never overrides
-- maintenance; the board records which worker checked it), 'maintenance' or 'online'
-- (an admin).
-- ARGV: fpga_id mode health reason worker_id
local id, mode, health, reason, wid = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5]
if mode ~= 'check' then
  local missing = unknown_board(id)
  if missing then return missing end
end
local b = board_key(id)
local current = hget(b, 'health') or 'unknown'
-- checked by this worker, even if maintenance hides the result until an admin's online
if mode == 'check' then hset(b, 'health_checked_by', wid) end
if mode == 'check' and current == 'maintenance' then return ok({health = current}) end
if mode == 'online' and current ~= 'maintenance' then return ok({health = current}) end
local t = now()
if not hget(b, 'state') then
  hset(b, 'state', 'idle', 'updated_at', t)
  board_event(id, {state = 'idle'})
end
set_health(id, health, reason, t)
return ok({health = health})
