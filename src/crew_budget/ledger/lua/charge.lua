-- charge: book a call that was made without a reservation (one let through
-- by fail_open while the ledger was down, replayed from the local journal):
-- its actual cost goes into ``spent`` of every bucket, past any limit (the
-- money is already spent), exactly once per id.
--
-- KEYS[1]   - P.."records"  (STREAM of spend records)
-- KEYS[2]   - P.."odd"      (ZSET of records far from the ledger clock)
-- KEYS[3]   - P.."oddseq"   (counter keeping "odd" members unique)
-- KEYS[4]   - P.."r:"..id   (the call's id: a tombstone makes repeats no-ops)
-- KEYS[4+i] - P.."b:"..key  (bucket i's counter hash), i = 1..n
-- ARGV[1]   - the id as a JSON string
-- ARGV[2]   - cost, nano-USD (decimal string)
-- ARGV[3]   - how long the tombstone stays, ms
-- ARGV[4]   - the record's ts (Unix s)
-- ARGV[5]   - the record as JSON
-- ARGV[6]   - retention of records, ms (0: no record kept, only its rollup)
-- ARGV[6+i] - bucket i's counter expiry (Unix s: window end + retention)
-- ARGV[7+n] - the UNITS of the buckets (see RESERVATION in _common.lua);
--             optional (absent or "" = every bucket is USD and takes the
--             cost): one entry per bucket, "" for a USD bucket, else a unit
--             letter (i, o, c) and what the call used there, e.g. ",i4100,c1"
--
-- Returns 1 if charged now, 0 if this id was charged before (nothing done).
--
-- Invariants: counters, the record and its hourly rollup (see ROLLUPS in
-- _common.lua) change in one atomic step; a repeat
-- (a journal replayed twice, e.g. after a crash between the charge and the
-- journal's note of it) changes nothing while the tombstone lives.

-- UNITS: what each bucket takes, checked before any write (VALIDATION).
local takes, nb = {}, #KEYS - 4
do
  local units = ARGV[7 + nb] or ''
  if units ~= '' then
    for e in string.gmatch(units .. ',', '([^,]*),') do
      if e ~= '' then
        if not find(e, '^[ioc]%d') then
          invalid('a bucket unit', 'must be "" or i, o or c and an amount', e)
        end
        arg_int('a bucket unit amount', string.sub(e, 2), MAX_NANO)
        takes[#takes + 1] = string.sub(e, 2)
      else
        takes[#takes + 1] = ARGV[2]
      end
    end
    if #takes ~= nb then invalid('the units', 'must have one entry per bucket', units) end
  end
end

if redis.call('EXISTS', KEYS[4]) == 1 then return 0 end
-- ROLLUPS (see _common.lua): the call counts in its record's hour. First:
-- the decode is the one step that can fail on a malformed record.
rollup_record(string.sub(KEYS[1], 1, -8), ARGV[5])
local _, now, now_ms = ledger_clock()
local retention_ms = tonumber(ARGV[6])
local cost = ARGV[2]
for i = 5, #KEYS do
  local fresh = redis.call('EXISTS', KEYS[i]) == 0
  if fresh and tonumber(ARGV[2 + i]) < now then
    -- the window ended more than the retention period ago: no counter to keep
  else
    redis.call('HINCRBY', KEYS[i], 'spent', takes[i - 4] or cost)
    if fresh then
      redis.call('HSET', KEYS[i], 'reserved', '0')
      redis.call('EXPIREAT', KEYS[i], ARGV[2 + i])
    end
  end
end
redis.call('SET', KEYS[4], 'unguarded\n' .. cost .. '\n0\n0\n' .. ARGV[3] .. '\n' .. ARGV[1]
  .. '\n\n[]', 'PX', ARGV[3])
local t = tonumber(ARGV[4])
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf',
  '(' .. string.format('%.3f', now - retention_ms / 1000))
if math.abs(t * 1000 - now_ms) <= 3600000 then
  append(KEYS[1], now_ms, retention_ms, ARGV[5])
elseif retention_ms > 0 then
  local n = redis.call('INCR', KEYS[3])
  redis.call('ZADD', KEYS[2], ARGV[4], n .. ':' .. ARGV[5])
end
return 1
