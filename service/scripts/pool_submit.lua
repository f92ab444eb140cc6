-- Queue a build_and_program job for the first free board of a pool: a platform (or
-- any) and tags, at a priority; placed at once if such a board is free, else when one
-- becomes free (lib.lua, Pools), in priority order and, within a priority, taking turns
-- between callers (each caller's next job gets the round after its last one, or after
-- the round last served, whichever is later).
-- ARGV: job_id owner session_id session_ttl max_lifetime filename design design_sha256
--       idem_key fingerprint idem_ttl max_queued_per_caller admin max_boards_per_caller
--       storage_budget storage_window requirement priority max_waiting
local job_id, owner, sid = ARGV[1], ARGV[2], ARGV[3]
local ttl, max_life = tonumber(ARGV[4]), tonumber(ARGV[5])
local filename, design, sha = ARGV[6], ARGV[7], ARGV[8]
local idem_key, fingerprint, idem_ttl = ARGV[9], ARGV[10], tonumber(ARGV[11])
local per_caller, admin, max_boards = tonumber(ARGV[12]), ARGV[13], tonumber(ARGV[14])
local budget, window = tonumber(ARGV[15]), tonumber(ARGV[16])
local req, priority, max_waiting = ARGV[17], tonumber(ARGV[18]), tonumber(ARGV[19])

local replay = idem_lookup(idem_key, fingerprint)
if replay then return replay end

local why = never_met(req)
if why then
  return fail('no_matching_board', 'No board can ever take this job: ' .. why .. '.')
end
local n = count_queued(caller_queued_key(owner), per_caller)
if n >= per_caller then
  return fail('too_many_queued_jobs', owner .. ' already has ' .. n ..
    ' jobs queued, the limit per caller; wait for some to finish or cancel some.')
end
local t = now()
if admin ~= '1' then
  local held = boards_held(owner, max_boards) + redis.call('SCARD', caller_waiting_key(owner))
  if held >= max_boards then
    return fail('too_many_boards', owner .. ' already holds or waits for ' .. held ..
      ' boards, the most one caller may hold at once; release one (or cancel a pool ' ..
      'job) first.')
  end
  local refused = over_budget(owner, budget, window, t)
  if refused then return refused end
end
local waiting = redis.call('ZCARD', pool_key(req))
if waiting >= max_waiting then
  return fail('too_many_queued_jobs', 'The pool ' .. req .. ' already has ' .. waiting ..
    ' jobs waiting, its limit; try again later.')
end

local k = job_key(job_id)
local platform, tags = split_req(req)
hset(k, 'job_id', job_id, 'type', 'build_and_program', 'status', 'queued',
  'owner', owner, 'session_id', sid, 'created_at', t, 'updated_at', t,
  'filename', filename, 'design_size', #design, 'design_sha256', sha,
  'pool', req, 'platform', platform, 'tags', tags, 'priority', priority,
  'session_ttl', ttl, 'session_max_lifetime', max_life)
redis.call('SET', design_key(job_id), design)
charge(owner, #design, window, t)
redis.call('SADD', caller_queued_key(owner), job_id)

local response = {job_id = job_id, status = 'queued', session_id = sid,
                  fpga_id = cjson.null, queue_position = 0}
local board = free_board_for(req)
if board then
  place(job_id, board, t)
  response.fpga_id = board
else
  -- its place: the priority's band, then its caller's next round, then its arrival
  local seq = redis.call('HINCRBY', FAIR, 'seq', 1)
  local served = tonumber(redis.call('HGET', FAIR, 'served') or '0')
  local last = tonumber(redis.call('HGET', FAIR, 'c:' .. owner) or '0')
  local round = math.max(served, last) + 1
  hset(FAIR, 'c:' .. owner, round)
  local member = string.format('%012d:%s', seq, job_id)
  redis.call('ZADD', pool_key(req), (100 - priority) * 4294967296 + round, member)
  redis.call('SADD', POOLS, req)
  redis.call('SADD', caller_waiting_key(owner), job_id)
  hset(k, 'pool_member', member, 'pool_round', round)
  response.queue_position = redis.call('ZRANK', pool_key(req), member)
  job_event(job_id, nil, 'queued')
end
idem_store(idem_key, fingerprint, idem_ttl, response)
return ok(response)
