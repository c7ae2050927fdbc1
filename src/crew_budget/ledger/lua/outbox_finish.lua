-- outbox_finish: ack, retry or fail a claimed entry (Ledger.outbox_ack,
-- outbox_retry, outbox_fail), only for the holder of its current token.
--
-- KEYS[1] entry HASH  P.."ob:e:"..key
-- ARGV    prefix P, key, token, new state (delivered|failed|pending),
--         delay_ms (pending only), error ("" for none)
-- Derived (same hash tag): the channel's due ZSET P.."ob:q:"..channel and
-- the group LIST P.."ob:g:"..group, named by the entry's own fields.
-- returns 1 if applied, 0 if the entry is not claimed with this token
--
-- A delivered or failed entry leaves its group list, and the group's next
-- live entry becomes its head (due at its own due time). The entry itself
-- stays (without its payload) until its key expires: it remembers that
-- the alert was sent.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local e = KEYS[1]
local fields = redis.call('HMGET', e, 'state', 'token', 'group', 'channel')
if ARGV[3] == '' or fields[1] ~= 'claimed' or fields[2] ~= ARGV[3] then
  return 0
end
local q = ARGV[1] .. 'ob:q:' .. fields[4]
if ARGV[4] == 'pending' then
  local due = now + tonumber(ARGV[5])
  redis.call('HSET', e, 'state', 'pending', 'token', '', 'due', due, 'error', ARGV[6])
  redis.call('ZADD', q, due, ARGV[2])
  return 1
end
redis.call('HSET', e, 'state', ARGV[4], 'token', '', 'payload', '')
if ARGV[6] ~= '' then
  redis.call('HSET', e, 'error', ARGV[6])
end
redis.call('ZREM', q, ARGV[2])
local g = ARGV[1] .. 'ob:g:' .. fields[3]
redis.call('LREM', g, 1, ARGV[2])
while true do
  local head = redis.call('LINDEX', g, 0)
  if not head then break end
  local he = ARGV[1] .. 'ob:e:' .. head
  local hf = redis.call('HMGET', he, 'state', 'due')
  if hf[1] == 'pending' or hf[1] == 'claimed' then
    redis.call('ZADD', q, hf[2], head)
    break
  end
  redis.call('LPOP', g)
end
return 1
