-- Token buckets of mutating calls: take one token for a call, or refuse it.
-- KEYS[1] the audit stream, KEYS[2] refused unknown-key calls not yet audited (hash:
--   address -> count), KEYS[3] when each address's count is due (zset: address -> time),
--   KEYS[4] the lab's counters (GET /metrics: refusals by bucket), KEYS[5] the bucket
--   (hash: tokens, at; absent in mode 'flush'); for a run, KEYS[6] its board (hash) and
--   KEYS[7] the caller's bucket for runs on that board.
-- ARGV: rate (tokens/s) burst audit_maxlen mode window address caller own_rate own_burst,
--   then the refused call's audit record as field value pairs.
-- A rate of 0 is no limit.
-- mode 'record' (a caller's bucket): a refused call's record goes to the audit stream. A
--   run on a board whose session the caller holds, reserved, costs nobody else: it takes
--   from the caller's bucket for that board (own_rate, own_burst) instead.
-- mode 'count' (an address's bucket for calls with unknown keys): the first refused call
--   of a window is recorded; the others are counted, and become one record (with a
--   'count') once the window has closed, so that a flood cannot push the trail out.
-- mode 'flush': only write the counts whose window has closed (before the trail is read).
-- Returns 0 (allowed) or the whole seconds until a token is there (refused), negative
-- when the bucket was that of runs on the caller's own board.
local rate, burst, maxlen, mode = tonumber(ARGV[1]), tonumber(ARGV[2]), ARGV[3], ARGV[4]
local window, address, caller = tonumber(ARGV[5]), ARGV[6], ARGV[7]
local own_rate, own_burst = tonumber(ARGV[8]), tonumber(ARGV[9])
local RECORD = 10  -- where the refused call's audit record starts in ARGV
local clock = redis.call('TIME')
local t = tonumber(clock[1]) + tonumber(clock[2]) / 1000000

local function audit(...)
  redis.call('XADD', KEYS[1], 'MAXLEN', '~', maxlen, '*', ...)
end

-- every address's count whose window has closed, as one record each
local function flush()
  for _, a in ipairs(redis.call('ZRANGEBYSCORE', KEYS[3], '-inf', t, 'LIMIT', 0, 100)) do
    local n = tonumber(redis.call('HGET', KEYS[2], a)) or 0
    if n > 0 then audit('client', a, 'status', '429', 'error', 'rate_limited', 'count', n) end
    redis.call('HDEL', KEYS[2], a)
    redis.call('ZREM', KEYS[3], a)
  end
end

if mode ~= 'record' then flush() end
if mode == 'flush' then return 0 end

local bucket, sign = KEYS[5], 1
if KEYS[7] and redis.call('HGET', KEYS[6], 'session_owner') == caller
    and redis.call('HGET', KEYS[6], 'state') == 'reserved' then
  bucket, rate, burst, sign = KEYS[7], own_rate, own_burst, -1
end
if rate <= 0 then return 0 end

local stored = redis.call('HMGET', bucket, 'tokens', 'at')
local tokens = tonumber(stored[1]) or burst
local at = tonumber(stored[2]) or t
if t > at then tokens = math.min(burst, tokens + (t - at) * rate) end
-- once full again the bucket is as good as absent: let it expire then
local ttl_ms = math.ceil(burst / rate * 1000) + 1000
if tokens >= 1 then
  redis.call('HSET', bucket, 'tokens', tokens - 1, 'at', t)
  redis.call('PEXPIRE', bucket, ttl_ms)
  return 0
end
redis.call('HSET', bucket, 'tokens', tokens, 'at', t)
redis.call('PEXPIRE', bucket, ttl_ms)
local refused_by = (mode == 'count' and 'unknown_key') or (sign < 0 and 'own_board') or 'caller'
redis.call('HINCRBY', KEYS[4], 'rate_limited|' .. refused_by, 1)
if mode == 'count' and redis.call('ZSCORE', KEYS[3], address) then
  redis.call('HINCRBY', KEYS[2], address, 1)
elseif #ARGV >= RECORD then
  audit(unpack(ARGV, RECORD))
  if mode == 'count' then
    redis.call('ZADD', KEYS[3], t + window, address)
    redis.call('HSET', KEYS[2], address, 0)
  end
end
return sign * math.max(1, math.ceil((1 - tokens) / rate))
