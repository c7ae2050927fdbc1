-- outbox_claim: lease the due heads of one channel (see Ledger.outbox_claim).
--
-- KEYS[1] due ZSET  P.."ob:q:"..channel
-- ARGV    prefix P, lease_ms, limit, token
-- returns one flat HGETALL array per claimed entry, oldest due first
--
-- Due: pending with its retry time reached, or claimed with its lease run
-- out (the claimant died or hangs). Claiming sets a new token, so the old
-- claimant can no longer ack, retry or fail the entry.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, tonumber(ARGV[3]))
local out = {}
for i, k in ipairs(due) do
  local e = ARGV[1] .. 'ob:e:' .. k
  local st = redis.call('HGET', e, 'state')
  if st == 'pending' or st == 'claimed' then
    local until_ms = now + tonumber(ARGV[2])
    redis.call('HINCRBY', e, 'attempts', 1)
    redis.call('HSET', e, 'state', 'claimed', 'token', ARGV[4] .. ':' .. i,
      'claimed', now, 'due', until_ms)
    redis.call('ZADD', KEYS[1], until_ms, k)
    out[#out + 1] = redis.call('HGETALL', e)
  else
    redis.call('ZREM', KEYS[1], k)  -- expired or already ended: not a head any more
  end
end
return out
