-- reserve: charge ``amount`` as reserved to every bucket of a call, or to none.
--
-- KEYS[1]      - P.."leases"   (ZSET of lease expiry; P is derived from it)
-- KEYS[2]      - P.."records"  (STREAM of spend records)
-- KEYS[3]      - P.."r:"..rid  (the reservation)
-- KEYS[3+i]    - P.."b:"..key  (bucket i's counter hash), i = 1..n
-- ARGV[1]      - reservation id (a random token: whoever holds it owns it)
-- ARGV[2]      - the id as a JSON string
-- ARGV[3]      - amount, nano-USD (decimal string, 0 <= amount < 2^53)
-- ARGV[4]      - lease, ms
-- ARGV[5]      - tombstone, ms: how long a finished reservation stays readable
-- ARGV[6]      - record tail JSON (role, model, crew, estimate_nano, metadata)
-- ARGV[7]      - retention of records, ms (0: none kept; rollups still count)
-- ARGV[8]      - most expired leases to reap first
-- ARGV[9]      - the buckets JSON of the RESERVATION value (see _common.lua)
-- ARGV[10]     - latest window start, ARGV[11] - earliest window end (Unix s):
--                the ledger clock must lie in [ARGV[10], ARGV[11]), that is
--                in every bucket's window
-- ARGV[12]     - latest counter expiry (Unix ms: window end + retention)
-- ARGV[13]     - the key spans of the counter keys in ARGV[9], or "" (see
--                RESERVATION in _common.lua)
-- ARGV[13+i]   - bucket i's limit, nano-USD ("" = no limit)
-- ARGV[13+n+i] - bucket i's counter expiry (Unix s: window end + retention)
-- ARGV[13+2n+i] - bucket i's scope as JSON (for a "blocked" record)
-- ARGV[14+3n]  - the ledger epoch this client last saw, or "" (see EPOCH in
--                _common.lua); optional (absent = "")
-- ARGV[15+3n]  - the live-limits version this client built its buckets with
--                (see overrides_write.lua); optional (absent or "" = no check)
-- ARGV[16+3n]  - the UNITS of the buckets (see RESERVATION in _common.lua);
--                optional (absent or "" = every bucket is USD and takes
--                ARGV[3]): one entry per bucket, comma-separated, "" for a
--                USD bucket, else a unit letter (i input tokens, o output
--                tokens, c calls) and what the call takes there, e.g.
--                ",,i4100,c1"; its limit (ARGV[13+i]) is in that unit
-- ARGV[1..6] (and the units' amounts) change with every call; the rest is
-- fixed per ledger and set of buckets, so the client sends it pre-encoded.
--
-- Returns one of
--   {"reset", epoch}    the ledger lost its state (see EPOCH in _common.lua):
--                       nothing charged; epoch is the "lost:..." marker
--   {"stale", version}  the client's live-limits version is not P.."ov:version"
--                       (version): nothing done; it re-reads the overrides
--   {"skew", now}       the ledger clock ``now`` (Unix s text) is outside a
--                       bucket's [starts_at, ends_at): nothing done
--   {"ok", now_ms}      reserved; the lease ends at now_ms + lease
--   {"ok", now_ms, epoch} the same, and the ledger's epoch differs from the
--                       client's (first call, or after a recovery): adopt it
--   {"dup", value}      the id is held (its RESERVATION value; or the
--                       tombstone string of an earlier version): nothing
--                       charged again. An ended reservation's key is gone
--                       (see TOMBSTONES in _common.lua): its id reserves
--                       anew (retries come within seconds, inside a lease)
--   {"deny", i, spent, reserved}
--                       bucket i would overflow: nothing charged, one
--                       "blocked" record appended and counted in its
--                       hour's rollup (see ROLLUPS in _common.lua)
--
-- Invariants: the clock check comes before any write; all or nothing across
-- every bucket (one script is one atomic step); after a grant every limited
-- bucket has spent + reserved <= limit; a repeated id never reserves twice
-- while it is held;
-- a counter gets its expiry (window end + retention) when it is created;
-- the reservation lives for its lease plus the tombstone, and never less
-- than the counters it may still have to correct.

-- VALIDATION (before any write; see VALIDATION in _common.lua) ----------
-- Runs on every call: text that reaches a Redis command as is (the amount,
-- the tombstone, counter expiries) is checked digit by digit (arg_int),
-- numbers only compared in Lua with the cheaper arg_count.
do
  local n = #KEYS - 3
  if n < 0 or #ARGV < 13 + 3 * n then
    invalid('reserve', 'takes at least 3+n keys and 13+3n arguments', #ARGV)
  end
  arg_text('the reservation id', ARGV[1], nil, nil)
  arg_text('the reservation id JSON', ARGV[2], 34, 34)
  arg_int('the reservation amount (nano-USD)', ARGV[3], MAX_NANO)
  arg_count('the lease (ms)', ARGV[4], MAX_NANO)
  arg_int('the tombstone (ms)', ARGV[5], MAX_NANO)
  arg_text('the record tail', ARGV[6], 34, nil)
  arg_count('the retention (ms)', ARGV[7], MAX_NANO)
  arg_count('the reap limit', ARGV[8], MAX_NANO)
  arg_text('the buckets JSON', ARGV[9], 91, 93)
  arg_num('the latest window start', ARGV[10])
  arg_num('the earliest window end', ARGV[11])
  arg_count('the latest counter expiry (ms)', ARGV[12], MAX_NANO)
  if ARGV[13] ~= '' and not find(ARGV[13], '^@[%d+,]+$') then
    invalid('the key spans', 'must be "" or "@" and offset+length pairs', ARGV[13])
  end
  for i = 14, 13 + n do
    if ARGV[i] ~= '' then arg_count('a bucket limit (nano-USD)', ARGV[i], MAX_NANO) end
    arg_int('a counter expiry (s)', ARGV[n + i], MAX_NANO)
    arg_text('a bucket scope', ARGV[2 * n + i], 34, 34)
  end
  if ARGV[15 + 3 * n] and ARGV[15 + 3 * n] ~= '' then
    arg_count('the live-limits version', ARGV[15 + 3 * n], MAX_NANO)
  end
  local units = ARGV[16 + 3 * n]
  if units and units ~= '' then
    local k = 0
    for e in string.gmatch(units .. ',', '([^,]*),') do
      k = k + 1
      if e ~= '' then
        if not find(e, '^[ioc]%d') then
          invalid('a bucket unit', 'must be "" or i, o or c and an amount', e)
        end
        arg_int('a bucket unit amount', string.sub(e, 2), MAX_NANO)
      end
    end
    if k ~= n then invalid('the units', 'must have one entry per bucket', units) end
  end
end
-- -------------------------------------------------------------------------

local rid, rid_json, amount, lease_ms = ARGV[1], ARGV[2], ARGV[3], tonumber(ARGV[4])
local tomb, tail, retention_ms = ARGV[5], ARGV[6], tonumber(ARGV[7])
local prefix = string.sub(KEYS[1], 1, -7)  -- strip "leases"
local nb = #KEYS - 3

local ts, now, now_ms = ledger_clock()

if nb > 0 and not (tonumber(ARGV[10]) <= now and now < tonumber(ARGV[11])) then
  return {'skew', ts}
end

-- EPOCH check (integrity; see EPOCH in _common.lua): before any write. A
-- client that sends no epoch (crew-budget 0.1.0, mid-upgrade) counts as new.
-- The live-limits version (below) is read in the same command: both keys
-- carry the namespace's hash tag, and every redis.call costs.
local seen = ARGV[14 + 3 * nb] or ''
local ov_seen = ARGV[15 + 3 * nb]
local checks_ov = ov_seen and ov_seen ~= ''
local got
if checks_ov then
  got = redis.call('MGET', prefix .. 'epoch', prefix .. 'ov:version')
else
  got = {redis.call('GET', prefix .. 'epoch')}
end
local epoch = check_epoch(prefix, seen, rid, ts, got[1])
if string.sub(epoch, 1, 5) == 'lost:' then return {'reset', epoch} end
-- end of the EPOCH check

-- LIVE LIMITS check (see overrides_write.lua): before any write of this
-- call. The client's buckets carry the overrides of the version it sent; if
-- an operator changed them since, it must re-read them and rebuild first.
if checks_ov then
  local ov = got[2] or '0'
  if ov ~= ov_seen then return {'stale', ov} end
end
-- end of the LIVE LIMITS check

reap(prefix, KEYS[1], KEYS[2], tonumber(ARGV[8]), ts, now_ms, retention_ms)

-- UNITS: what each bucket takes, its unit's amount or (no entry) ``amount``.
local takes, units = {}, ARGV[16 + 3 * nb] or ''
if units ~= '' then
  local i = 0
  for e in string.gmatch(units .. ',', '([^,]*),') do
    i = i + 1
    if e ~= '' then takes[i] = string.sub(e, 2) end
  end
end

-- The RESERVATION value is written first, with NX: the duplicate check and
-- the write in one command. A held id keeps its value and answers "dup"; a
-- refusal below deletes the new key again (one script: nobody sees it).
local expires_ms = now_ms + lease_ms
local keep_ms = math.max(expires_ms + tonumber(tomb), tonumber(ARGV[12]))
local spans = units == '' and ARGV[13] or ARGV[13] .. '#' .. units  -- UNITS
if not redis.call('SET', KEYS[3], 'reserved\n' .. spans .. '\n' .. int_str(expires_ms) .. '\n'
    .. amount .. '\n' .. tomb .. '\n' .. rid_json .. '\n' .. tail .. '\n' .. ARGV[9],
    'PXAT', int_str(keep_ms), 'NX') then
  return {'dup', redis.call('GET', KEYS[3])}
end

local fresh = {}
for i = 1, nb do
  local limit = ARGV[13 + i]
  if limit ~= '' then
    local c = redis.call('HMGET', KEYS[3 + i], 'spent', 'reserved')
    local spent, reserved = c[1] or '0', c[2] or '0'
    if tonumber(spent) + tonumber(reserved) + tonumber(takes[i] or amount) > tonumber(limit) then
      redis.call('DEL', KEYS[3])  -- nothing reserved after all
      -- A COMPACT record (see _common.lua): a loop stuck at its limit makes many.
      append_compact(prefix, KEYS[2], now_ms, retention_ms, ts, rid, 'blocked', '0', NO_USAGE,
        tail, ARGV[13 + 2 * nb + i])
      -- ROLLUPS (see _common.lua): the blocked call counts in its hour.
      rollup_tail(prefix, now, 'blocked', '0', NO_USAGE, ARGV[13 + 2 * nb + i], tail)
      return {'deny', i, spent, reserved}
    end
    fresh[i] = not (c[1] or c[2])
  end
end

for i = 1, nb do
  local take = takes[i] or amount
  local total = redis.call('HINCRBY', KEYS[3 + i], 'reserved', take)
  -- A new counter gets its expiry. Unlimited buckets were not read above:
  -- for them "nothing else reserved" stands in for "new" (setting the same
  -- expiry again is harmless).
  if fresh[i] or (fresh[i] == nil and total == tonumber(take)) then
    redis.call('EXPIREAT', KEYS[3 + i], ARGV[13 + nb + i])
  end
end

redis.call('ZADD', KEYS[1], int_str(expires_ms), rid)
if epoch ~= seen then return {'ok', int_str(now_ms), epoch} end
return {'ok', int_str(now_ms)}
