-- A caller's token bucket: take one token for a mutating call, or refuse it.
-- KEYS[1] the caller's bucket (hash: tokens, at), KEYS[2] the audit stream.
-- ARGV: rate (tokens/s) burst audit_maxlen, then the refused call's audit record as
--       field value pairs, added to the audit stream only when the call is refused.
-- Returns 0 (allowed) or the whole seconds until a token is there (refused).
local rate, burst, maxlen = tonumber(ARGV[1]), tonumber(ARGV[2]), ARGV[3]
local clock = redis.call('TIME')
local t = tonumber(clock[1]) + tonumber(clock[2]) / 1000000
local stored = redis.call('HMGET', KEYS[1], 'tokens', 'at')
local tokens = tonumber(stored[1]) or burst
local at = tonumber(stored[2]) or t
if t > at then tokens = math.min(burst, tokens + (t - at) * rate) end
-- once full again the bucket is as good as absent: let it expire then
local ttl_ms = math.ceil(burst / rate * 1000) + 1000
if tokens >= 1 then
  redis.call('HSET', KEYS[1], 'tokens', tokens - 1, 'at', t)
  redis.call('PEXPIRE', KEYS[1], ttl_ms)
  return 0
end
redis.call('HSET', KEYS[1], 'tokens', tokens, 'at', t)
redis.call('PEXPIRE', KEYS[1], ttl_ms)
if #ARGV > 3 then
  redis.call('XADD', KEYS[2], 'MAXLEN', '~', maxlen, '*', unpack(ARGV, 4))
end
return math.max(1, math.ceil((1 - tokens) / rate))
