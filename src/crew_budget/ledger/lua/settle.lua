-- settle: replace a reservation by the call's actual cost (idempotent).
--
-- KEYS[1] - P.."leases"   (ZSET of lease expiry; P is derived from it)
-- KEYS[2] - P.."records"  (STREAM of spend records)
-- KEYS[3] - P.."r:"..rid  (the reservation; the counter keys P.."b:"..key
--           it charged are read from it: same tag, same slot)
-- ARGV[1] - reservation id
-- ARGV[2] - actual cost, nano-USD (decimal string)
-- ARGV[3] - usage as a JSON fragment ("input_tokens":N,... five fields)
-- ARGV[4] - retention of records, ms (0: none kept; rollups still count)
--
-- No reaping here: settle is on every call's path, and reserve (and release,
-- status, reap) already expire leases that ran out, before they charge or
-- read anything. A settle of its own lease that ran out is handled below.
--
-- Returns {"unknown"} if the id was never reserved here (or it ended more
-- than a day ago: see TOMBSTONES in _common.lua), else
-- {state, applied, cost}: applied = 1 when this call settled
-- it; 0 when it had already ended (settled, released or expired): then
-- nothing changed and cost is what it was charged.
--
-- Invariants: a reservation ends exactly once, and its record and hourly
-- rollup (see ROLLUPS in _common.lua) are written in the same step; only
-- the buckets it charged move (reserved -= amount, spent += cost), even if
-- their windows have ended since, so money lands in the period it was spent
-- in. A lease that ran out is expired (charged
-- at its reserved amount), not settled.

-- VALIDATION (before any write; see VALIDATION in _common.lua) ----------
if #KEYS < 3 or #ARGV < 4 then
  invalid('settle', 'takes at least 3 keys and 4 arguments', #ARGV)
end
arg_text('the reservation id', ARGV[1], nil, nil)
arg_int('the settled cost (nano-USD)', ARGV[2], MAX_NANO)
arg_usage('the usage', ARGV[3])
arg_count('the retention (ms)', ARGV[4], MAX_NANO)
-- -------------------------------------------------------------------------

local rid, cost, retention_ms = ARGV[1], ARGV[2], tonumber(ARGV[4])
local ts, _, now_ms = ledger_clock()

local v = redis.call('GET', KEYS[3])
if not v then return tomb_get(string.sub(KEYS[1], 1, -7), rid, now_ms) end  -- TOMBSTONES
local state, was, _, exp, amount = parse(v)
if state ~= 'reserved' then return {state, 0, was} end
if tonumber(exp) <= now_ms then
  finish(KEYS[1], KEYS[2], KEYS[3], rid, v, 'expired', amount, NO_USAGE, ts, now_ms, retention_ms)
  return {'expired', 0, amount}
end
finish(KEYS[1], KEYS[2], KEYS[3], rid, v, 'settled', cost, ARGV[3], ts, now_ms, retention_ms)
return {'settled', 1, cost}
