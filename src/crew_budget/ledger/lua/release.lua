-- release: drop a reservation at zero cost, the provider was never reached
-- (idempotent).
--
-- KEYS[1] - P.."leases"   (ZSET of lease expiry; P is derived from it)
-- KEYS[2] - P.."records"  (STREAM of spend records)
-- KEYS[3] - P.."r:"..rid  (the reservation; the counter keys P.."b:"..key
--           it charged are read from it: same tag, same slot)
-- ARGV[1] - reservation id
-- ARGV[2] - retention of records, ms (0: none kept; rollups still count)
-- ARGV[3] - most expired leases to reap first
--
-- Returns {"unknown"} if the id was never reserved here (or it ended more
-- than a day ago: see TOMBSTONES in _common.lua), else
-- {state, applied, cost}: applied = 1 when this call
-- released it (cost 0); 0 when it had already ended: nothing changed.
--
-- Invariants: as settle. A lease that ran out is expired (charged at its
-- reserved amount), never released for free.

-- VALIDATION (before any write; see VALIDATION in _common.lua) ----------
if #KEYS < 3 or #ARGV < 3 then
  invalid('release', 'takes at least 3 keys and 3 arguments', #ARGV)
end
arg_text('the reservation id', ARGV[1], nil, nil)
arg_count('the retention (ms)', ARGV[2], MAX_NANO)
arg_count('the reap limit', ARGV[3], MAX_NANO)
-- -------------------------------------------------------------------------

local rid, retention_ms = ARGV[1], tonumber(ARGV[2])
local ts, _, now_ms = ledger_clock()
reap(string.sub(KEYS[1], 1, -7), KEYS[1], KEYS[2], tonumber(ARGV[3]), ts, now_ms, retention_ms)

local v = redis.call('GET', KEYS[3])
if not v then return tomb_get(string.sub(KEYS[1], 1, -7), rid, now_ms) end  -- TOMBSTONES
local state, was, _, exp, amount = parse(v)
if state ~= 'reserved' then return {state, 0, was} end
if tonumber(exp) <= now_ms then
  finish(KEYS[1], KEYS[2], KEYS[3], rid, v, 'expired', amount, NO_USAGE, ts, now_ms, retention_ms)
  return {'expired', 0, amount}
end
finish(KEYS[1], KEYS[2], KEYS[3], rid, v, 'released', '0', NO_USAGE, ts, now_ms, retention_ms)
return {'released', 1, '0'}
