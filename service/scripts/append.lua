-- Append lines to a job's log (trimmed to about max_lines), their bytes counted against
-- the storage budget of the job's owner, and tell the live followers (one message per
-- call, not per line: a worker appends its buffered lines every LOG_FLUSH).
-- Entry ids are 0-1, 0-2, ...: an entry's id is its line's number in the job's whole log,
-- which trimming never changes (GET .../logs streamed uses them as event ids).
-- ARGV: job_id max_lines storage_window notices_channel, then the lines
local job_id, max_lines, window, channel = ARGV[1], ARGV[2], tonumber(ARGV[3]), ARGV[4]
local k = log_key(job_id)
local bytes = 0
for i = 5, #ARGV do
  local added = redis.pcall('XADD', k, 'MAXLEN', '~', max_lines, '0-*', 'l', ARGV[i])
  if type(added) == 'table' and added.err then
    -- a log begun with time ids (before line numbers): it goes on as it began
    redis.call('XADD', k, 'MAXLEN', '~', max_lines, '*', 'l', ARGV[i])
  end
  bytes = bytes + #ARGV[i]
end
charge(hget(job_key(job_id), 'owner'), bytes, window, now())
redis.call('PUBLISH', channel, job_id)
return ok(bytes)
