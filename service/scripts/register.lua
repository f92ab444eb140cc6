-- A worker's boards into the lab's inventory, at its start and at each heartbeat: each
-- board's platform and tags (sorted, comma-joined), and the pools' indexes of both. A
-- board registered again with other ones is moved; one registered the same is left as
-- it was. A free board of a worker that is back takes a waiting pool job.
-- ARGV: (fpga_id platform tags) per board
local registered = 0
for i = 1, #ARGV, 3 do
  local id, platform, tags = ARGV[i], ARGV[i + 1], ARGV[i + 2]
  local entry = cjson.encode({platform = platform, tags = tags})
  local old = redis.call('HGET', INVENTORY, id)
  if old ~= entry then
    if old then
      local was = cjson.decode(old)
      redis.call('SREM', key('platform', was.platform), id)
      for tag in string.gmatch(was.tags, '[^,]+') do redis.call('SREM', key('tag', tag), id) end
    end
    hset(INVENTORY, id, entry)
    redis.call('SADD', key('platform', platform), id)
    for tag in string.gmatch(tags, '[^,]+') do redis.call('SADD', key('tag', tag), id) end
    if not redis.call('HGET', board_key(id), 'state') then
      hset(board_key(id), 'state', 'idle', 'updated_at', now())
    end
    board_event(id, {platform = platform, tags = tags})
    registered = registered + 1
  end
  refresh_free(id)
end
if redis.call('SCARD', POOLS) > 0 then
  local t = now()
  for i = 1, #ARGV, 3 do try_place_board(ARGV[i], t) end
end
return ok({registered = registered})
