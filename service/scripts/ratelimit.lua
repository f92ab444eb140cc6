-- Token buckets of mutating calls: take one token for a call, or refuse it.
-- KEYS[1] the audit stream, KEYS[2] refused unknown-key calls not yet audited (hash:
--   address -> count), KEYS[3] when each address's count is due (zset: address -> time),
--   KEYS[4] the bucket (hash: tokens, at; absent in mode 'flush').
-- ARGV: rate (tokens/s) burst audit_maxlen mode window address, then the refused call's
--   audit record as field value pairs.
-- mode 'record' (a caller's bucket): a refused call's record goes to the audit stream.
-- mode 'count' (an address's bucket for calls with unknown keys): the first refused call
--   of a window is recorded; the others are counted, and become one record (with a
--   'count') once the window has closed, so that a flood cannot push the trail out.
-- mode 'flush': only write the counts whose window has closed (before the trail is read).
-- Returns 0 (allowed) or the whole seconds until a token is there (refused).
local rate, burst, maxlen, mode = tonumber(ARGV[1]), tonumber(ARGV[2]), ARGV[3], ARGV[4]
local window, address = tonumber(ARGV[5]), ARGV[6]
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

local stored = redis.call('HMGET', KEYS[4], 'tokens', 'at')
local tokens = tonumber(stored[1]) or burst
local at = tonumber(stored[2]) or t
if t > at then tokens = math.min(burst, tokens + (t - at) * rate) end
-- once full again the bucket is as good as absent: let it expire then
local ttl_ms = math.ceil(burst / rate * 1000) + 1000
if tokens >= 1 then
  redis.call('HSET', KEYS[4], 'tokens', tokens - 1, 'at', t)
  redis.call('PEXPIRE', KEYS[4], ttl_ms)
  return 0
end
redis.call('HSET', KEYS[4], 'tokens', tokens, 'at', t)
redis.call('PEXPIRE', KEYS[4], ttl_ms)
if mode == 'count' and redis.call('ZSCORE', KEYS[3], address) then
  redis.call('HINCRBY', KEYS[2], address, 1)
elseif #ARGV > 6 then
  audit(unpack(ARGV, 7))
  if mode == 'count' then
    redis.call('ZADD', KEYS[3], t + window, address)
    redis.call('HSET', KEYS[2], address, 0)
  end
end
return math.max(1, math.ceil((1 - tokens) / rate))
