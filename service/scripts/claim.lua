-- Take or keep the lease on a board for a worker. KEYS[1] owner key.
-- ARGV: worker_id ttl_ms. Returns the holder after the call.
local holder = redis.call('GET', KEYS[1])
if holder == false or holder == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return ARGV[1]
end
return holder
