-- The library every script's body runs in (service/lua.py: one Redis Function library).
-- TRANSITIONS (service/states.py) and the key layout LAYOUT (service/keys.py) are
-- substituted at load time, as Lua tables: one truth, read here and in Python.
local TRANSITIONS = @TRANSITIONS@
local LAYOUT = @LAYOUT@

-- Each key template split around its '{id}' (service/lua.py): a key is two
-- concatenations.
local KEY_PARTS = @KEY_PARTS@

local function key(kind, thing)
  local parts = KEY_PARTS[kind]
  return parts[1] .. tostring(thing) .. parts[2]
end

-- The server's time, read once per call: every change of one atomic step, and each of
-- its events, has the same time.
local clock

local function now()
  if not clock then
    local t = redis.call('TIME')
    clock = tonumber(t[1]) + tonumber(t[2]) / 1000000
  end
  return clock
end

local function board_key(id) return key('board', id) end
local function queue_key(id) return key('queue', id) end
local function queued_key(id) return key('queued', id) end
local function owner_key(id) return key('owner', id) end
local function job_key(id) return key('job', id) end
local function log_key(id) return key('log', id) end
local function design_key(id) return key('design', id) end
local function waveform_key(id) return key('waveform', id) end
local function caller_queued_key(name) return key('caller_queued', name) end
local RUNNING = LAYOUT.running
local EXPIRY = LAYOUT.expiry
local EVENTS = LAYOUT.events
local EVENTLOG = LAYOUT.eventlog
local EVENTLOG_MAX = @EVENTLOG_MAX@
local INVENTORY = LAYOUT.inventory
-- Pools (see the end of this file): the boards free for a pool job, the requirements
-- that have jobs waiting, and the fair-share clock.
local FREE = LAYOUT.free
local POOLS = LAYOUT.pools
local FAIR = LAYOUT.fair

-- Hash fields read in this call (key -> field -> value, false: none), so that a field
-- the scripts ask for again (a board's state, a job's owner) costs no command. Every
-- change of a hash a script reads goes through hset/hdel below, which keep it true; a
-- number written is read again (Redis formats it), a string is known.
local cached = {}

local function hget(key, field)
  local fields = cached[key]
  if not fields then
    fields = {}
    cached[key] = fields
  end
  local v = fields[field]
  if v == nil then
    v = redis.call('HGET', key, field)
    fields[field] = v
  end
  if v == false then return nil end
  return v
end

local function hset(key, ...)
  redis.call('HSET', key, ...)
  local fields = cached[key]
  if fields then
    local args = {...}
    for i = 1, #args, 2 do
      local value = args[i + 1]
      local field = tostring(args[i])
      if type(value) == 'string' then fields[field] = value else fields[field] = nil end
    end
  end
end

local function hdel(key, ...)
  redis.call('HDEL', key, ...)
  local fields = cached[key]
  if fields then
    for _, field in ipairs({...}) do fields[tostring(field)] = false end
  end
end

-- The fields of hash `key` a script is about to read, in one command (HMGET) instead of
-- one HGET each: the board and job fields the job scripts read.
local BOARD_FIELDS = {'state', 'health', 'health_reason', 'current_job_id', 'busy_since',
                      'session_id', 'session_owner', 'session_expires_at'}
local JOB_FIELDS = {'status', 'worker', 'fpga_id', 'type', 'owner', 'entry_id', 'created_at',
                    'pool', 'pool_member', 'pool_round', 'session_id', 'session_ttl',
                    'session_max_lifetime'}

local function preload(key, names)
  local fields = cached[key]
  if not fields then
    fields = {}
    cached[key] = fields
  end
  local values = redis.call('HMGET', key, unpack(names))
  for i, name in ipairs(names) do
    if fields[name] == nil then fields[name] = values[i] end
  end
end

-- One bulk read (`command`: MGET, or HMGET of hash `key`) of `name(item)` for each of
-- `items`, in batches (a Lua call takes only so many arguments): the replies in order.
local BATCH = 1000
local function in_batches(command, items, name, key)
  local out = {}
  for first = 1, #items, BATCH do
    local args = {}
    if key then args[1] = key end
    for i = first, math.min(first + BATCH - 1, #items) do args[#args + 1] = name(items[i]) end
    for _, value in ipairs(redis.call(command, unpack(args))) do out[#out + 1] = value end
  end
  return out
end

local function board_state(id)
  return hget(board_key(id), 'state') or 'idle'
end

-- One change of the lab, at the server's time: appended to the event log (the stream
-- GET /events reads, capped at about EVENTLOG_MAX entries) and published on EVENTS
-- (which wakes ?wait= requests), by the script that makes the change: an event is never
-- lost, nor out of order with the state it reports.
local function publish(kind, fields)
  fields.kind = kind
  fields.at = now()
  local body = cjson.encode(fields)
  redis.call('XADD', EVENTLOG, 'MAXLEN', '~', EVENTLOG_MAX, '*', 'e', body)
  redis.call('PUBLISH', EVENTS, body)
end

-- A board's changes in this script call, merged into one `board` event per board and
-- published when the script answers ok(): fields as {state, event, health,
-- health_reason, session ('opened', 'renewed', 'ended'), session_owner,
-- session_expires_at, current_job_id (null: none)}, only those that changed.
local board_changes, board_order = {}, {}

local function board_event(id, fields)
  local e = board_changes[id]
  if not e then
    e = {fpga_id = tonumber(id)}
    board_changes[id] = e
    board_order[#board_order + 1] = id
  end
  for field, value in pairs(fields) do e[field] = value end
end

local function job_event(job_id, id, status, placed)
  local k = job_key(job_id)
  local fields = {job_id = job_id, fpga_id = tonumber(id), status = status,
                  type = hget(k, 'type'), owner = hget(k, 'owner')}
  if placed then fields.placed = true end
  if status == 'failed' or status == 'cancelled' then fields.error = hget(k, 'error') end
  publish('job', fields)
end

local function fail(code, message)
  return cjson.encode({err = code, message = message})
end

-- nil, or the refusal of a call on a board the lab does not have: the lab's boards are
-- those a worker registered (register.lua), whether or not one serves them now.
local function unknown_board(id)
  if redis.call('HEXISTS', INVENTORY, id) == 1 then return nil end
  return fail('fpga_not_found', 'The lab has no FPGA ' .. id .. ': no worker has ' ..
    'registered a board with that id.')
end

-- Place the best waiting pool job on board `id` if it is free (defined with the pools).
local try_place_board

-- Every script that changes a board ends here: a board it left free takes the next pool
-- job in the same atomic step, then its changes are published.
local function ok(value)
  if try_place_board and #board_order > 0 and redis.call('SCARD', POOLS) > 0 then
    local t = now()
    for _, id in ipairs(board_order) do try_place_board(id, t) end
  end
  for _, id in ipairs(board_order) do publish('board', board_changes[id]) end
  board_changes, board_order = {}, {}
  return cjson.encode({ok = value})
end

local function set_current_job(id, job_id)
  hset(board_key(id), 'current_job_id', job_id)
  board_event(id, {current_job_id = job_id})
end

-- The board's current job is no longer `job_id` (if it was: nil clears whatever it is).
local function clear_current_job(id, job_id)
  local current = hget(board_key(id), 'current_job_id')
  if current and (job_id == nil or current == job_id) then
    hdel(board_key(id), 'current_job_id')
    board_event(id, {current_job_id = cjson.null})
  end
end

-- Keep FREE true: the registered boards that are idle and healthy (good), those a pool
-- job may be placed on (whether a worker serves one is checked when placing).
local function refresh_free(id)
  local b = board_key(id)
  if board_state(id) == 'idle' and hget(b, 'health') == 'good'
      and redis.call('HEXISTS', INVENTORY, id) == 1 then
    redis.call('SADD', FREE, id)
  else
    redis.call('SREM', FREE, id)
  end
end

local function set_health(id, health, reason, t)
  local b = board_key(id)
  local changed = hget(b, 'health') ~= health or (hget(b, 'health_reason') or '') ~= reason
  hset(b, 'health', health, 'health_reason', reason, 'health_checked_at', t)
  if changed then board_event(id, {health = health, health_reason = reason}) end
  refresh_free(id)
end

-- How long boards stay taken, from a session's start to the board's return to idle:
-- an average over the recent ones (each weighs 1/5), for pool jobs' ETAs.
local function note_turnaround(id, state, target, t)
  local b = board_key(id)
  if state == 'idle' and target ~= 'idle' then
    hset(b, 'busy_since', t)
  elseif target == 'idle' then
    local since = tonumber(hget(b, 'busy_since') or '')
    if since then
      local seconds = t - since
      local average = tonumber(redis.call('HGET', FAIR, 'turnaround') or '')
      if average then seconds = average + (seconds - average) / 5 end
      hset(FAIR, 'turnaround', seconds)
      hdel(b, 'busy_since')
    end
  end
end

-- Apply `event` to board `id` through the table; returns (old, new) or (old, nil).
local function transition(id, event, t)
  local state = board_state(id)
  local row = TRANSITIONS[state]
  local target = row and row[event]
  if target then
    hset(board_key(id), 'state', target, 'updated_at', t)
    board_event(id, {state = target, event = event})
    note_turnaround(id, state, target, t)
    refresh_free(id)
  end
  return state, target
end

local SESSION_FIELDS = {'session_id', 'session_owner', 'session_created_at',
                        'session_expires_at', 'session_max_expires_at'}

-- A session on board `id` (idle: moved to queued) for `owner`, `ttl` seconds long, at
-- most `max_life`; returns its expiry.
local function open_session(id, owner, sid, t, ttl, max_life)
  local expires, max_expires = t + ttl, t + max_life
  if expires > max_expires then expires = max_expires end
  transition(id, 'submit', t)
  hset(board_key(id), 'session_id', sid, 'session_owner', owner,
    'session_created_at', t, 'session_expires_at', expires, 'session_max_expires_at', max_expires)
  board_event(id, {session = 'opened', session_owner = owner, session_expires_at = expires})
  redis.call('SADD', key('caller_boards', owner), id)
  redis.call('ZADD', EXPIRY, expires, id)
  return expires
end

local function close_session(id)
  local owner = hget(board_key(id), 'session_owner')
  if owner then redis.call('SREM', key('caller_boards', owner), id) end
  if hget(board_key(id), 'session_id') then board_event(id, {session = 'ended'}) end
  hdel(board_key(id), unpack(SESSION_FIELDS))
  redis.call('ZREM', EXPIRY, id)
end

-- Whether the board's session has reached its expires_at at time t. Such a session is
-- over, though the housekeeping pass may not have reset the board yet.
local function session_expired(id, t)
  local expires = tonumber(hget(board_key(id), 'session_expires_at') or '')
  return expires ~= nil and expires <= t
end

-- Ownership of the board's session: '' when allowed, else an error reply.
local function check_owner(id, caller, admin, session_header)
  local b = board_key(id)
  local sid = hget(b, 'session_id')
  if not sid then return '' end
  if admin ~= '1' and hget(b, 'session_owner') ~= caller then
    return fail('not_session_owner',
      'FPGA ' .. id .. ' is reserved by another caller\'s session.')
  end
  if session_header ~= '' and session_header ~= sid then
    return fail('session_mismatch',
      'X-Session-ID does not match the active session of FPGA ' .. id .. '.')
  end
  return ''
end

local function new_job(job_id, id, jtype, owner, session_id, t, extra)
  local k = job_key(job_id)
  hset(k, 'job_id', job_id, 'fpga_id', id, 'type', jtype,
    'status', 'queued', 'owner', owner, 'created_at', t, 'updated_at', t)
  if session_id and session_id ~= '' then hset(k, 'session_id', session_id) end
  for field, value in pairs(extra) do hset(k, field, value) end
  local entry = redis.call('XADD', queue_key(id), '*', 'job_id', job_id)
  hset(k, 'entry_id', entry)
  redis.call('SADD', queued_key(id), job_id)
  redis.call('SADD', caller_queued_key(owner), job_id)
  job_event(job_id, id, 'queued')
  return {job_id = job_id, fpga_id = tonumber(id), status = 'queued'}
end

-- Drop a stream entry nobody needs any more (acked or never delivered).
local function drop_entry(id, entry)
  if entry then
    redis.call('XACK', queue_key(id), 'workers', entry)
    redis.call('XDEL', queue_key(id), entry)
  end
end

local function finish_keys(job_id, retention)
  redis.call('EXPIRE', job_key(job_id), retention)
  redis.call('EXPIRE', log_key(job_id), retention)
  if hget(job_key(job_id), 'type') == 'build_and_program' then  -- the jobs with a design
    redis.call('EXPIRE', design_key(job_id), retention)
  end
end

-- A job leaves the queue (taken, failed or cancelled): out of the board's and owner's sets.
local function unqueue(job_id, id)
  redis.call('SREM', queued_key(id), job_id)
  local owner = hget(job_key(job_id), 'owner')
  if owner then redis.call('SREM', caller_queued_key(owner), job_id) end
end

-- Jobs in a queue set. Only when the set has reached `limit` are its members checked,
-- and those no longer queued (a record expired or lost) dropped: the limit is never
-- applied on a stale count, and the common case costs one SCARD.
local function count_queued(set_key, limit)
  local n = redis.call('SCARD', set_key)
  if n < limit then return n end
  for _, member in ipairs(redis.call('SMEMBERS', set_key)) do
    if hget(job_key(member), 'status') ~= 'queued' then redis.call('SREM', set_key, member) end
  end
  return redis.call('SCARD', set_key)
end

-- The queue limits for a new job of `caller` on board `id`: nil, or an error reply.
local function queue_full(id, caller, per_board, per_caller)
  local n = count_queued(queued_key(id), per_board)
  if n >= per_board then
    return fail('too_many_queued_jobs', 'FPGA ' .. id .. ' already has ' .. n ..
      ' jobs queued, its limit; wait for some to finish.')
  end
  n = count_queued(caller_queued_key(caller), per_caller)
  if n >= per_caller then
    return fail('too_many_queued_jobs', caller .. ' already has ' .. n ..
      ' jobs queued, the limit per caller; wait for some to finish or cancel some.')
  end
  return nil
end

-- Lab-wide counters and histograms for GET /metrics (service/measures.py): one hash,
-- updated by the call that makes the change counted. A histogram keeps per-bucket counts
-- (bucket i: the first bound >= the value; #BUCKETS + 1 is +Inf) and its sum; the
-- count is the buckets' total (service/measures.py adds them up).
local METRICS = LAYOUT.metrics
local BUCKETS = @BUCKETS@

local function count(field)
  redis.call('HINCRBY', METRICS, field, 1)
end

local function observe(name, labels, value)
  value = tonumber(value)
  if not value or value < 0 then return end
  local i = #BUCKETS + 1
  for j, bound in ipairs(BUCKETS) do
    if value <= bound then i = j; break end
  end
  local base = name .. '|' .. labels .. '|'
  redis.call('HINCRBY', METRICS, base .. i, 1)
  redis.call('HINCRBYFLOAT', METRICS, base .. 'sum', value)
end

-- Job `k` ended: outcome is its final status, or 'lost'.
local function job_ended(k, outcome)
  count('jobs_finished|' .. (hget(k, 'type') or '') .. ',' .. outcome)
end

-- What a worker measured of a job (JSON: {seconds = {phase = s}, cache = 'hit'|'miss'}).
local function record_measures(measured)
  if not measured or measured == '' then return end
  local m = cjson.decode(measured)
  local cache = m.cache or ''
  if cache ~= '' then count('build_cache|' .. cache) end
  for phase, seconds in pairs(m.seconds or {}) do
    observe(phase, phase == 'build' and cache or '', seconds)
  end
end

local function cancel_job(job_id, id, reason, t, retention)
  local k = job_key(job_id)
  hset(k, 'status', 'cancelled', 'updated_at', t, 'finished_at', t, 'error', reason)
  unqueue(job_id, id)
  drop_entry(id, hget(k, 'entry_id'))
  finish_keys(job_id, retention)
  job_ended(k, 'cancelled')
  job_event(job_id, id, 'cancelled')
end

-- Idempotency: a stored answer for this caller and key, checked against the request.
local function idem_lookup(idem_key, fingerprint)
  if idem_key == '' then return nil end
  local stored = redis.call('GET', idem_key)
  if not stored then return nil end
  local record = cjson.decode(stored)
  if record.fingerprint ~= fingerprint then
    return fail('idempotency_key_reused',
      'Idempotency-Key was already used for a different request.')
  end
  record.response.replayed = true
  return ok(record.response)
end

local function idem_store(idem_key, fingerprint, ttl, response)
  if idem_key ~= '' then
    redis.call('SET', idem_key, cjson.encode({fingerprint = fingerprint, response = response}),
      'EX', ttl)
  end
end

-- What one caller may hold: boards (its open sessions) and stored bytes (designs, run
-- requests, logs, results) over a rolling window, counted per slot of BUDGET_SLOTS slots
-- in one hash per caller. Admins are held to neither (the scripts check `admin`).
local BUDGET_SLOTS = 24
local MIB = 1024 * 1024

local function stored_key(name) return key('caller_stored', name) end

local function size(n)
  if n >= MIB then return string.format('%.1f MiB', n / MIB) end
  return string.format('%d bytes', n)
end

-- The boards whose session `caller` holds: its set, whose members are checked against
-- the boards (and those it no longer holds dropped) only once it has reached `limit`.
local function boards_held(caller, limit)
  local k = key('caller_boards', caller)
  local n = redis.call('SCARD', k)
  if n < limit then return n end
  for _, id in ipairs(redis.call('SMEMBERS', k)) do
    if redis.call('HGET', board_key(id), 'session_owner') ~= caller then
      redis.call('SREM', k, id)
    end
  end
  return redis.call('SCARD', k)
end

local function too_many_boards(caller, limit)
  local n = boards_held(caller, limit)
  if n < limit then return nil end
  return fail('too_many_boards', caller .. ' already holds ' .. n .. ' boards, the most ' ..
    'one caller may hold at once; release one (or let its session end) first.')
end

-- Count `bytes` stored by `owner` at time t; slots that left the window are dropped.
local function charge(owner, bytes, window, t)
  if not owner or owner == '' or bytes <= 0 then return end
  local slot_len = window / BUDGET_SLOTS
  local slot = math.floor(t / slot_len)
  local k = stored_key(owner)
  -- The hash must outlive its newest slot's leaving the window: its expiry is set (and
  -- old slots dropped) when a slot begins; later charges to that slot need neither.
  if redis.call('HINCRBY', k, slot, bytes) ~= bytes then return end
  redis.call('EXPIRE', k, math.ceil(window + slot_len))
  if redis.call('HLEN', k) > BUDGET_SLOTS then
    for _, field in ipairs(redis.call('HKEYS', k)) do
      if tonumber(field) <= slot - BUDGET_SLOTS then hdel(k, field) end
    end
  end
end

-- nil, or the refusal of a new job of `caller`, whose stored bytes in the window have
-- reached `budget` (0: none), saying when enough of them leave the window.
local function over_budget(caller, budget, window, t)
  if budget <= 0 then return nil end
  local slot_len = window / BUDGET_SLOTS
  local first = math.floor(t / slot_len) - BUDGET_SLOTS + 1
  local flat = redis.call('HGETALL', stored_key(caller))
  local slots, total = {}, 0
  for i = 1, #flat, 2 do
    local slot, n = tonumber(flat[i]), tonumber(flat[i + 1])
    if slot >= first then
      total = total + n
      slots[#slots + 1] = {slot, n}
    end
  end
  if total < budget then return nil end
  table.sort(slots, function(a, b) return a[1] < b[1] end)
  local frees, left = t + window, total
  for _, s in ipairs(slots) do
    left = left - s[2]
    if left < budget then
      frees = (s[1] + BUDGET_SLOTS) * slot_len  -- when slot s leaves the window
      break
    end
  end
  local wait = math.max(1, math.ceil(frees - t))
  return cjson.encode({err = 'storage_budget_exceeded', retry_after = wait, message =
    string.format('%s has stored %s (designs, run requests, logs, results) in the last ' ..
      '%d s, its budget of %s per %d s; new jobs are refused until enough of it is older ' ..
      'than that, in %d s.', caller, size(total), window, size(budget), window, wait)})
end

-- Pools: a job for any board of a platform with some tags (`platform|tag,tag`, either
-- part empty: any), waiting in that requirement's queue until a board that matches is
-- free. Placement is the one step below, in the script that makes the board free (ok())
-- or that submits the job: no board is given twice, no job taken twice.
local function pool_key(req) return key('pool', req) end
local function caller_waiting_key(name) return key('caller_waiting', name) end

-- A requirement's parts: platform, tags, and the restricted tags its caller may not use
-- (boards with any of those are not for it): `platform|tag,tag|denied,denied`.
local function split_req(req)
  local first = string.find(req, '|', 1, true)
  local second = string.find(req, '|', first + 1, true)
  if not second then return string.sub(req, 1, first - 1), string.sub(req, first + 1), '' end
  return string.sub(req, 1, first - 1), string.sub(req, first + 1, second - 1),
    string.sub(req, second + 1)
end

-- The tags of a comma-joined list as a set.
local function tag_set(csv)
  local set = {}
  for tag in string.gmatch(csv, '[^,]+') do set[tag] = true end
  return set
end

-- Whether a board of `platform` with the tags in set `have` meets requirement `req`.
local function meets(req, platform, have)
  local want_platform, want_tags, denied = split_req(req)
  if want_platform ~= '' and want_platform ~= platform then return false end
  for tag in string.gmatch(want_tags, '[^,]+') do
    if not have[tag] then return false end
  end
  for tag in string.gmatch(denied, '[^,]+') do
    if have[tag] then return false end
  end
  return true
end

-- Of board ids `ids`, those with none of the restricted tags `denied` (comma-joined).
local function without_denied(ids, denied)
  if denied == '' then return ids end
  local kept = {}
  for _, id in ipairs(ids) do
    local ok_board = true
    for tag in string.gmatch(denied, '[^,]+') do
      if redis.call('SISMEMBER', key('tag', tag), id) == 1 then ok_board = false; break end
    end
    if ok_board then kept[#kept + 1] = id end
  end
  return kept
end

-- The sets whose intersection is the boards meeting `req`, starting with `first` (a
-- placeholder if nil, for the caller to remove).
local function req_sets(req, first)
  local platform, tags = split_req(req)
  local sets = {first or false}
  if platform ~= '' then sets[#sets + 1] = key('platform', platform) end
  for tag in string.gmatch(tags, '[^,]+') do sets[#sets + 1] = key('tag', tag) end
  return sets
end

-- Board ids of the inventory meeting `req`, read one by one.
local function boards_meeting(req)
  local ids = {}
  for _, id in ipairs(redis.call('HKEYS', INVENTORY)) do
    local entry = cjson.decode(redis.call('HGET', INVENTORY, id))
    if meets(req, entry.platform, tag_set(entry.tags)) then ids[#ids + 1] = id end
  end
  return ids
end

-- Board ids meeting `req`, whatever their state: from the platform and tag indexes
-- (the inventory's ids only for a requirement of neither).
local function all_meeting(req)
  local platform, tags, denied = split_req(req)
  if platform == '' and tags == '' then
    return without_denied(redis.call('HKEYS', INVENTORY), denied)
  end
  local sets = req_sets(req, nil)
  table.remove(sets, 1)
  return without_denied(redis.call('SINTER', unpack(sets)), denied)
end

-- Whether some board of the lab meets `req`, whatever its state: from the indexes, in
-- one command (the whole inventory is read only to say why not).
local function ever_met(req)
  local platform, tags, denied = split_req(req)
  if denied ~= '' then return #all_meeting(req) > 0 end  -- the boards, one by one
  if platform == '' and tags == '' then return redis.call('HLEN', INVENTORY) > 0 end
  local args = req_sets(req, nil)
  args[1] = #args - 1  -- SINTERCARD numkeys key [key ...] LIMIT 1
  args[#args + 1] = 'LIMIT'
  args[#args + 1] = 1
  return redis.call('SINTERCARD', unpack(args)) > 0
end

-- Why no board of the lab can ever meet `req` (whatever their state), or nil.
local function never_met(req)
  if ever_met(req) then return nil end
  local platform, tags, denied = split_req(req)
  if denied ~= '' and ever_met(platform .. '|' .. tags) then
    return 'the boards that meet it are restricted (tags ' .. string.gsub(denied, ',', ', ') ..
      ') to other callers'
  end
  local platforms, with_platform = {}, 0
  for _, entry in ipairs(redis.call('HVALS', INVENTORY)) do
    local e = cjson.decode(entry)
    platforms[e.platform] = true
    if e.platform == platform then with_platform = with_platform + 1 end
  end
  local names = {}
  for name in pairs(platforms) do names[#names + 1] = name end
  table.sort(names)
  if #names == 0 then return 'the lab has no boards yet (no worker has registered any)' end
  if platform ~= '' and with_platform == 0 then
    return 'no board has platform ' .. platform .. ' (the lab has ' ..
      table.concat(names, ', ') .. ')'
  end
  local missing, of = {}, (platform ~= '' and (platform .. ' ') or '')
  for tag in string.gmatch(tags, '[^,]+') do
    if #boards_meeting(platform .. '|' .. tag) == 0 then missing[#missing + 1] = tag end
  end
  if #missing > 0 then
    return 'no ' .. of .. 'board has the tag' .. (#missing > 1 and 's ' or ' ') ..
      table.concat(missing, ', ')
  end
  return 'no single ' .. of .. 'board has all of the tags ' .. string.gsub(tags, ',', ', ')
end

-- Put waiting job `job_id` on free board `id`: its session opens, its build is queued
-- on the board as a submit's is, and it leaves the pool's queue.
local function place(job_id, id, t)
  local k = job_key(job_id)
  preload(k, JOB_FIELDS)
  local owner, req = hget(k, 'owner'), hget(k, 'pool')
  local member = hget(k, 'pool_member')
  if member then
    redis.call('ZREM', pool_key(req), member)
    if redis.call('ZCARD', pool_key(req)) == 0 then redis.call('SREM', POOLS, req) end
    redis.call('SREM', caller_waiting_key(owner), job_id)
    local round = tonumber(hget(k, 'pool_round'))
    if round > (tonumber(redis.call('HGET', FAIR, 'served') or '0')) then
      hset(FAIR, 'served', round)
    end
  end
  open_session(id, owner, hget(k, 'session_id'), t, tonumber(hget(k, 'session_ttl')),
    tonumber(hget(k, 'session_max_lifetime')))
  set_current_job(id, job_id)
  local entry = redis.call('XADD', queue_key(id), '*', 'job_id', job_id)
  hset(k, 'fpga_id', id, 'entry_id', entry, 'placed_at', t, 'updated_at', t)
  hdel(k, 'pool_member')
  redis.call('SADD', queued_key(id), job_id)
  job_event(job_id, id, 'queued', true)
end

-- How many members of its smallest index a pool submit looks at before it reads the
-- whole intersection (only when none of them fits: few of the free boards meet it).
local SAMPLE = 16

-- The free board, served by a live worker, that job `req` can take now: one at random
-- of those that fit, so that pool jobs spread over the lab's boards and its workers
-- (the lowest id first would pile them onto one worker). A random sample of the smallest
-- of the sets whose intersection is the answer (the free boards, the platform's, each
-- tag's), each checked against the others: a few commands however many boards are free.
local function free_board_for(req)
  local _, _, denied = split_req(req)
  local sets = req_sets(req, FREE)
  local smallest, size = 1, nil
  for i, set in ipairs(sets) do
    local n = redis.call('SCARD', set)
    if n == 0 then return nil end
    if not size or n < size then smallest, size = i, n end
  end
  local function fits(id)
    for i, set in ipairs(sets) do
      if i ~= smallest and redis.call('SISMEMBER', set, id) == 0 then return false end
    end
    return #without_denied({id}, denied) == 1 and redis.call('EXISTS', owner_key(id)) == 1
  end
  -- a sample of a small set is all of it, in order: start at a random place in it
  local start = math.floor((now() % 1) * 1000000)  -- the call's microseconds
  local sample = redis.call('SRANDMEMBER', sets[smallest], SAMPLE)
  for i = 1, #sample do
    local id = sample[(start + i) % #sample + 1]
    if fits(id) then return tonumber(id) end
  end
  if size <= SAMPLE then return nil end  -- the sample was the whole set
  local ids = without_denied(redis.call('SINTER', unpack(sets)), denied)
  for i = 1, #ids do
    local id = ids[(start + i) % #ids + 1]
    if redis.call('EXISTS', owner_key(id)) == 1 then return tonumber(id) end
  end
  return nil
end

try_place_board = function(id, t)
  if redis.call('SISMEMBER', FREE, id) == 0 or redis.call('EXISTS', owner_key(id)) == 0 then
    return
  end
  local entry = redis.call('HGET', INVENTORY, id)
  if not entry then return end
  entry = cjson.decode(entry)
  local have = tag_set(entry.tags)
  local best, best_score
  for _, req in ipairs(redis.call('SMEMBERS', POOLS)) do
    if meets(req, entry.platform, have) then
      local head = redis.call('ZRANGE', pool_key(req), 0, 0, 'WITHSCORES')
      if #head == 0 then
        redis.call('SREM', POOLS, req)
      else
        local score = tonumber(head[2])
        if not best or score < best_score or (score == best_score and head[1] < best) then
          best, best_score = head[1], score
        end
      end
    end
  end
  if best then place(string.sub(best, string.find(best, ':', 1, true) + 1), id, t) end
end
