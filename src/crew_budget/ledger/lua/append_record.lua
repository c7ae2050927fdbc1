-- append_record: add a record no reservation produced (e.g. "unguarded").
--
-- KEYS[1] - P.."records"  (STREAM of spend records)
-- KEYS[2] - P.."odd"      (ZSET of records whose ts is far from the ledger
--           clock, scored by ts: stream ids must follow the clock)
-- KEYS[3] - P.."oddseq"   (counter that keeps "odd" members unique)
-- ARGV[1] - the record's ts (Unix s)
-- ARGV[2] - the record as JSON
-- ARGV[3] - retention of records, ms (0: no record kept, only its rollup)
-- ARGV[4] - how far (ms) ts may be from the ledger clock to go in the stream
--
-- Returns 1 if the record went into the stream, 2 if into the odd set (or
-- nowhere, with a retention of 0).
--
-- Invariants: every record is kept for the retention period, where a
-- time-range read finds it by its own ts; the odd set is trimmed like the
-- stream; a spend record (not a reset) adds to its hourly rollup in the
-- same step (see ROLLUPS in _common.lua).

-- VALIDATION (before any write; see VALIDATION in _common.lua) ----------
if #KEYS < 3 or #ARGV < 4 then
  invalid('append_record', 'takes at least 3 keys and 4 arguments', #ARGV)
end
arg_num('the record ts', ARGV[1])
arg_text('the record', ARGV[2], 123, 125)
arg_count('the retention (ms)', ARGV[3], MAX_NANO)
arg_count('the odd-record distance (ms)', ARGV[4], MAX_NANO)
-- -------------------------------------------------------------------------

-- ROLLUPS (see _common.lua): the record counts in the hour of its own ts.
-- First: the decode is the one step that can fail on a malformed record.
rollup_record(string.sub(KEYS[1], 1, -8), ARGV[2])

local _, now, now_ms = ledger_clock()
local retention_ms = tonumber(ARGV[3])
local t = tonumber(ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf',
  '(' .. string.format('%.3f', now - retention_ms / 1000))
if math.abs(t * 1000 - now_ms) <= tonumber(ARGV[4]) then
  append(KEYS[1], now_ms, retention_ms, ARGV[2])
  return 1
end
if retention_ms == 0 then return 2 end
local n = redis.call('INCR', KEYS[3])
redis.call('ZADD', KEYS[2], ARGV[1], n .. ':' .. ARGV[2])
return 2
