-- overrides_write: change a role's live limits (crew-budget set/pause/resume)
-- in one atomic step: store and delete overrides, bump the version, append
-- the audit record.
--
-- KEYS[1]      - P.."ov"          (HASH "role|kind" -> Override JSON)
-- KEYS[2]      - P.."ov:version"  (STRING integer; never expires)
-- KEYS[3]      - P.."records"     (STREAM of spend records)
-- (derived)    - P.."resets"      (ZSET of audit records, see keep_reset in
--                _common.lua: the override's audit record is kept there too)
-- ARGV[1]      - retention of records, ms
-- ARGV[2]      - the audit record JSON (outcome "override")
-- ARGV[3]      - n, how many overrides to store
-- ARGV[3+2i-1], ARGV[3+2i] - field and Override JSON of the i-th, i = 1..n
-- ARGV[4+2n..] - fields to delete
--
-- Returns the new version. Every reserve compares the version its client
-- sent with KEYS[2] before any write (see reserve.lua), so every process
-- sees the change on its next call. The hash and the version carry no
-- expiry: volatile-* eviction never takes them.

-- VALIDATION (before any write; see VALIDATION in _common.lua) ----------
local n
do
  if #KEYS < 3 or #ARGV < 3 then
    invalid('overrides_write', 'takes 3 keys and at least 3 arguments', #ARGV)
  end
  arg_count('the retention (ms)', ARGV[1], MAX_NANO)
  arg_text('the audit record', ARGV[2], 123, 125)
  n = arg_count('the number of overrides', ARGV[3], 1000)
  if #ARGV < 3 + 2 * n then
    invalid('overrides_write', 'has fewer overrides than it says', #ARGV)
  end
  for i = 1, n do
    arg_text('an override field', ARGV[2 + 2 * i], nil, nil)
    arg_text('an override', ARGV[3 + 2 * i], 123, 125)
  end
  for i = 4 + 2 * n, #ARGV do
    arg_text('an override field', ARGV[i], nil, nil)
  end
end
-- -------------------------------------------------------------------------

local _, _, now_ms = ledger_clock()
for i = 4 + 2 * n, #ARGV do
  redis.call('HDEL', KEYS[1], ARGV[i])
end
for i = 1, n do
  redis.call('HSET', KEYS[1], ARGV[2 + 2 * i], ARGV[3 + 2 * i])
end
local version = redis.call('INCR', KEYS[2])
append(KEYS[3], now_ms, tonumber(ARGV[1]), ARGV[2])
-- An audit fact rollups do not hold: kept beside the resets (see keep_reset).
keep_reset(string.sub(KEYS[1], 1, -3), now_ms / 1000, ARGV[2])
return version
