-- reap: expire reservations whose lease ran out.
--
-- KEYS[1] - P.."leases"   (ZSET of lease expiry; P is derived from it, and
--           the reservations P.."r:"..rid and their counters from P and
--           the ids: same tag, same slot)
-- KEYS[2] - P.."records"  (STREAM of spend records)
-- ARGV[1] - retention of records, ms (0: none kept; rollups still count)
-- ARGV[2] - most reservations to expire in this call (bounds the script's run)
--
-- Returns the number of reservations expired.
--
-- Invariants: an expired reservation is charged at its reserved amount on
-- exactly the buckets it charged (reserved -= amount, spent += amount), is
-- marked "expired" and gets one "expired" record, counted in its hour's
-- rollup in the same step (see ROLLUPS in _common.lua): a crash between
-- reserve and settle over-counts, never under-counts.

-- VALIDATION (before any write; see VALIDATION in _common.lua) ----------
if #KEYS < 2 or #ARGV < 2 then
  invalid('reap', 'takes at least 2 keys and 2 arguments', #ARGV)
end
arg_count('the retention (ms)', ARGV[1], MAX_NANO)
arg_count('the reap limit', ARGV[2], MAX_NANO)
-- -------------------------------------------------------------------------

local ts, _, now_ms = ledger_clock()
return reap(string.sub(KEYS[1], 1, -7), KEYS[1], KEYS[2], tonumber(ARGV[2]), ts, now_ms,
  tonumber(ARGV[1]))
