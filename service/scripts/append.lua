-- Append lines to a job's log (trimmed to about max_lines), their bytes counted against
-- the storage budget of the job's owner.
-- ARGV: job_id max_lines storage_window, then the lines
local job_id, max_lines, window = ARGV[1], ARGV[2], tonumber(ARGV[3])
local k = log_key(job_id)
local bytes = 0
for i = 4, #ARGV do
  redis.call('XADD', k, 'MAXLEN', '~', max_lines, '*', 'l', ARGV[i])
  bytes = bytes + #ARGV[i]
end
charge(hget(job_key(job_id), 'owner'), bytes, window, now())
return ok(bytes)
