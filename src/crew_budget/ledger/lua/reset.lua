-- reset: zero a bucket's spend and record it. Reservations in flight stay.
--
-- KEYS[1] - P.."b:"..key  (the bucket's counter hash)
-- KEYS[2] - P.."records"  (STREAM of spend records)
-- ARGV[1] - counter expiry (Unix s: window end + retention)
-- ARGV[2] - retention of records, ms (0: none kept; rollups still count)
-- ARGV[3] - the bucket's scope as JSON
-- ARGV[4] - record tail JSON (role, model, crew, estimate_nano, metadata)
--
-- Returns {old_spent, reserved}, nano-USD as decimal strings.
--
-- Invariants: the "reset" record carries cost_nano = -old_spent, so the sum
-- of records still matches the counter; both change in one atomic step. The
-- record also goes into P.."resets" (see keep_reset in _common.lua).

-- VALIDATION (before any write; see VALIDATION in _common.lua) ----------
if #KEYS < 2 or #ARGV < 4 then
  invalid('reset', 'takes at least 2 keys and 4 arguments', #ARGV)
end
arg_int('the counter expiry (s)', ARGV[1], MAX_NANO)
arg_count('the retention (ms)', ARGV[2], MAX_NANO)
arg_text('the scope', ARGV[3], 34, 34)
arg_text('the record tail', ARGV[4], 34, nil)
-- -------------------------------------------------------------------------

local ts, now, now_ms = ledger_clock()
local c = redis.call('HMGET', KEYS[1], 'spent', 'reserved')
local old, reserved = c[1] or '0', c[2] or '0'
redis.call('HSET', KEYS[1], 'spent', '0', 'reserved', reserved)
redis.call('EXPIREAT', KEYS[1], ARGV[1])
local record = record_json(ts, '""', 'reset', negate(old), NO_USAGE, ARGV[3], ARGV[4])
append(KEYS[2], now_ms, tonumber(ARGV[2]), record)
keep_reset(string.sub(KEYS[2], 1, -8), now, record)
return {old, reserved}
