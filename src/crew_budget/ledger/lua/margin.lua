-- margin: merge one model family's estimate-margin samples (crew_budget.margin)
-- into its histogram, in one atomic step, and return the merged histogram.
--
-- KEYS[1]      - P.."margins"  (HASH family -> "bin:count,bin:count,...",
--                bins ascending; see merge_margin_bins in ledger/base.py,
--                which this mirrors exactly)
-- ARGV[1]      - history: once the family holds more samples than this,
--                every count is halved (rounded down; empty bins dropped)
-- ARGV[2]      - the family ("provider/line", at most 200 bytes)
-- ARGV[3]      - the hash's expiry, ms (the ledger's retention)
-- ARGV[4+2i-2], ARGV[4+2i-1] - bin (0..200) and count to add, i = 1..n
--
-- Returns the merged "bin:count,..." text. O(bins) <= 201 per call, and a
-- guard calls it once per 16 settles, not per settle. The hash expires
-- with the retention, renewed by every merge: margins are statistics, and
-- a family that has not been seen for that long starts again.

-- VALIDATION (before any write; see VALIDATION in _common.lua) ----------
local history, family
do
  if #KEYS < 1 or #ARGV < 3 or #ARGV % 2 ~= 1 then
    invalid('margin', 'takes 1 key and 3 arguments plus bin/count pairs', #ARGV)
  end
  history = arg_count('the history', ARGV[1], MAX_NANO)
  family = ARGV[2]
  if #family == 0 or #family > 200 then
    invalid('margin', 'needs a family of 1 to 200 bytes', family)
  end
  arg_int('the expiry (ms)', ARGV[3], MAX_NANO)
  for i = 4, #ARGV, 2 do
    arg_count('a margin bin', ARGV[i], 201)
    arg_count('a margin count', ARGV[i + 1], MAX_NANO)
  end
end
-- -------------------------------------------------------------------------

local counts = {}
local old = redis.call('HGET', KEYS[1], family)
if old then
  for b, c in string.gmatch(old, '(%d+):(%d+)') do
    counts[tonumber(b)] = tonumber(c)
  end
end
for i = 4, #ARGV, 2 do
  local b = tonumber(ARGV[i])
  counts[b] = (counts[b] or 0) + tonumber(ARGV[i + 1])
end
local total = 0
for _, c in pairs(counts) do
  total = total + c
end
local halve = total > history
local out = {}
for b = 0, 200 do
  local c = counts[b]
  if c then
    if halve then
      c = math.floor(c / 2)
    end
    if c > 0 then
      out[#out + 1] = b .. ':' .. int_str(c)
    end
  end
end
local text = table.concat(out, ',')
if text == '' then
  redis.call('HDEL', KEYS[1], family)
else
  redis.call('HSET', KEYS[1], family, text)
end
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return text
