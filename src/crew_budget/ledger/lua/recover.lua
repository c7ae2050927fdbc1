-- recover: re-arm a ledger that lost its state (`crew-budget recover
-- --accept-loss`), and keep who did it, when and why.
--
-- KEYS[1] - P.."epoch"    (see EPOCH in _common.lua)
-- KEYS[2] - P.."records"  (STREAM of spend records)
-- ARGV[1] - the new epoch, "recovered:<id>"
-- ARGV[2] - the audit record as JSON (who, why, and the epoch the client
--           read before, in its metadata)
-- ARGV[3] - retention of records, ms (0: none kept; rollups still count)
--
-- Returns the epoch replaced ("" if there was none).
--
-- Invariants: the new epoch has no expiry; the audit record is appended
-- (and kept in P.."resets", see keep_reset in _common.lua) in the same
-- atomic step.

local _, now, now_ms = ledger_clock()
local old = redis.call('GET', KEYS[1]) or ''
redis.call('SET', KEYS[1], ARGV[1])
append(KEYS[2], now_ms, tonumber(ARGV[3]), ARGV[2])
keep_reset(string.sub(KEYS[2], 1, -8), now, ARGV[2])  -- the audit record, kept 400 days
return old
