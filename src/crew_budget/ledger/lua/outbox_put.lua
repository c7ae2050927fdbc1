-- outbox_put: add one alert-outbox entry unless its key exists (see
-- Ledger.outbox_put). The put is the alert's exactly-once claim.
--
-- KEYS[1] entry HASH   P.."ob:e:"..key
-- KEYS[2] group LIST   P.."ob:g:"..group   (entry keys, oldest first)
-- KEYS[3] due ZSET     P.."ob:q:"..channel (the head of each group -> due ms)
-- ARGV    prefix P, key, group, channel, payload, ttl_ms
-- returns 1 if added, 0 if the key already exists
--
-- Only the head of a group list is in the due ZSET, so a group's entries
-- are delivered one after the other, in the order they were put. Entry
-- fields: key group channel payload state(pending|claimed|delivered|failed)
-- token attempts created(ms) claimed(ms or "") due(ms) error.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
if redis.call('EXISTS', KEYS[1]) == 1 then
  return 0
end
local ttl = tonumber(ARGV[6])
redis.call('HSET', KEYS[1], 'key', ARGV[2], 'group', ARGV[3], 'channel', ARGV[4],
  'payload', ARGV[5], 'state', 'pending', 'token', '', 'attempts', 0,
  'created', now, 'claimed', '', 'due', now, 'error', '')
redis.call('PEXPIRE', KEYS[1], ttl)
-- Heads whose entry expired (or ended) would block the group: drop them.
while true do
  local head = redis.call('LINDEX', KEYS[2], 0)
  if not head then break end
  local st = redis.call('HGET', ARGV[1] .. 'ob:e:' .. head, 'state')
  if st == 'pending' or st == 'claimed' then break end
  redis.call('LPOP', KEYS[2])
  redis.call('ZREM', KEYS[3], head)
end
redis.call('RPUSH', KEYS[2], ARGV[2])
if redis.call('PTTL', KEYS[2]) < ttl then
  redis.call('PEXPIRE', KEYS[2], ttl)
end
if redis.call('LINDEX', KEYS[2], 0) == ARGV[2] then
  redis.call('ZADD', KEYS[3], now, ARGV[2])
end
return 1
