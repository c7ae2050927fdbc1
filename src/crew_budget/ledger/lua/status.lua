-- status: spent and reserved of some buckets, after reaping expired leases.
--
-- KEYS[1]   - P.."leases"   (ZSET of lease expiry; P is derived from it)
-- KEYS[2]   - P.."records"  (STREAM of spend records)
-- KEYS[2+i] - P.."b:"..key  (bucket i's counter hash), i = 1..n
-- ARGV[1]   - retention of records, ms (0: none kept; rollups still count)
-- ARGV[2]   - most expired leases to reap first
--
-- Returns {spent1, reserved1, spent2, reserved2, ...}, nano-USD as decimal
-- strings ("0" for a bucket never charged).
--
-- Invariants: a reservation whose lease ran out is never reported as merely
-- reserved (up to the reap bound): it is expired first.

-- VALIDATION (before any write; see VALIDATION in _common.lua) ----------
if #KEYS < 2 or #ARGV < 2 then
  invalid('status', 'takes at least 2+ keys and 2 arguments', #ARGV)
end
arg_count('the retention (ms)', ARGV[1], MAX_NANO)
arg_count('the reap limit', ARGV[2], MAX_NANO)
-- -------------------------------------------------------------------------

local ts, _, now_ms = ledger_clock()
reap(string.sub(KEYS[1], 1, -7), KEYS[1], KEYS[2], tonumber(ARGV[2]), ts, now_ms,
  tonumber(ARGV[1]))
local out = {}
for i = 3, #KEYS do
  local c = redis.call('HMGET', KEYS[i], 'spent', 'reserved')
  out[#out + 1] = c[1] or '0'
  out[#out + 1] = c[2] or '0'
end
return out
