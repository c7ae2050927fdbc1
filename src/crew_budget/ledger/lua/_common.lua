-- crew-budget Redis ledger: helpers prepended to every operation script.
--
-- Not a script on its own: RedisLedger prepends this text to each operation
-- file before registering it, so every operation is still ONE script (one
-- EVALSHA, one atomic step) with its contract at the top of its own file.
--
-- Key layout. Every key of a namespace carries the hash tag {ns}, so all of
-- them hash to one Redis Cluster slot; P below is the prefix "cb:{ns}:".
--   P.."leases"         ZSET    reservation id -> lease expiry (Unix ms)
--   P.."records"        STREAM  spend records: COMPACT entries (below) from
--                               settle/release/expiry, field "r" = SpendRecord
--                               JSON for the rest; trimmed by MINID to the
--                               retention period
--   P.."c:"..day        HASH    record context JSON -> small id (COMPACT records)
--   P.."odd"            ZSET    appended records whose ts is far from the
--                               ledger clock (score = ts), trimmed by score
--   P.."oddseq"         STRING  counter keeping "odd" members unique
--   P.."r:"..rid        STRING  one reservation while it is held, see
--                               RESERVATION below; deleted when it ends
--   P.."t:"..day..":"..level..":"..shard  HASH  TOMBSTONES of ended ones
--   P.."t:"..day..":n"  STRING  how many reservations ended that UTC day
--   P.."b:"..bucketkey  HASH    spent, reserved (nano-USD integers)
--   P.."claim:"..marker STRING  exactly-once markers (SET NX PX, no script)
--   P.."epoch"          STRING  the ledger's EPOCH (below); never expires
--   P.."ru:"..hour      HASH    the ROLLUPS of one UTC hour (below)
--   P.."resets"         ZSET    "reset" records (JSON, score = ts), kept as
--                               long as rollups, whatever the records' retention
--
-- Keys DERIVED inside scripts rather than passed in KEYS: reap builds
-- P.."r:"..rid from the ids in the leases ZSET, finish reads the counter
-- keys a reservation charged from its value (they were in the KEYS of the
-- reserve that created it), and the TOMBSTONE, rollup and COMPACT record
-- context keys are built from P (itself derived from KEYS[1]), the id and
-- the ledger clock. All carry the same hash tag as KEYS[1]: same slot, so
-- every script stays cluster-safe.
--
-- RESERVATION value: eight fields separated by "\n" (none can contain a raw
-- newline: the first five are words, integers or key spans, the last three
-- JSON):
--   state \n cost \n expires_ms \n amount \n tomb_ms \n rid_json \n tail \n buckets
-- state is reserved|settled|released|expired; cost is the charge once it
-- ended; tail is the record fields fixed at reserve time (role, model, crew,
-- estimate_nano, metadata) as a JSON fragment; buckets is a JSON array of
-- [counter key, bucket key, limit, starts_at, ends_at, counter expiry,
-- scope JSON], one per bucket charged. One string, so one GET reads it and
-- one SET (with its expiry) writes it.
-- While the state is "reserved", the cost field holds KEY SPANS instead:
-- "@" then "offset+length" per counter key, comma-separated, giving where
-- each counter key's text lies inside the buckets JSON (0-based byte offset,
-- bytes), so finish reads the keys with string.sub instead of decoding the
-- JSON (cjson is the costliest step of a settle). The client writes spans
-- only when every key appears verbatim in the JSON (no character JSON
-- escapes); otherwise, and in values written by crew-budget 0.1.0, the
-- field is "" and finish decodes the JSON. Either way the JSON stays
-- complete, so 0.1.0 clients (which ignore this field until they overwrite
-- it with the cost) still read every value.
-- UNITS: a reservation whose buckets are not all USD appends "#" and the
-- units list reserve got (its last argument, see reserve.lua) to that
-- field: one entry per counter key, in order, "" for a USD bucket (it took
-- ``amount``) or a unit letter (i input tokens, o output tokens, c calls)
-- and what the call took there. finish moves each bucket by its own entry
-- (see unit_charge). Without "#" every bucket is USD, as before units.

-- TOMBSTONES: once a reservation ends, its key P.."r:"..rid is DELETED
-- and its final state and cost go into a compact per-day record of ended
-- ids (see TOMBSTONES below), which answers repeated settles and releases
-- (idempotent, invariant 4) for at least a day after the end: ~15 bytes
-- per call instead of ~260 for a key of its own. (Earlier versions kept
-- the key as a tombstone string; one they left is still read.)

-- Money: amounts travel as decimal strings and reach HINCRBY as such (exact
-- int64 arithmetic inside Redis). They become Lua numbers (doubles) only to
-- be compared with a limit, which is exact because the client rejects
-- amounts and limits of 2^53 nano-USD (~ $9.0M) or more. Numbers handed back
-- to redis.call go through int_str (a bare Lua number may lose digits).

-- VALIDATION: every operation script checks ALL of its ARGV in a block at
-- its top, before its first write, with the helpers below. Redis does not
-- roll a script back when it fails half way: the writes made before the
-- error stay (that is how one absurd cost once erased a role's spend). A
-- bad argument raises an error reply starting "CBINVALID"; the client turns
-- it into crew_budget.errors.AmountError and nothing has been written.
-- Argument counts are checked as minimums, so a script that grows an
-- argument at its end keeps working; each new argument needs its own check.
local MAX_NANO = 9007199254740992  -- 2^53: money compares exactly below it

local find, byte = string.find, string.byte

local function invalid(name, why, s)
  error({err = 'CBINVALID ' .. name .. ' ' .. why .. ', got "'
    .. string.sub(tostring(s), 1, 40) .. '"'})
end

-- Text handed to a Redis command or stored as is (an amount for HINCRBY, a
-- time for EXPIREAT or PX): decimal digits only (no sign, exponent, spaces
-- or hex, which tonumber would take and Redis would refuse half way), at
-- most 16 of them, below ``max``. Returns it as a number.
local function arg_int(name, s, max)
  local x = #s <= 16 and find(s, '^%d+$') and tonumber(s)
  if not x or x >= max then
    invalid(name, 'must be an integer from 0 to ' .. string.format('%.0f', max - 1), s)
  end
  return x
end

-- A whole number only ever used as a Lua number (a retention, a lease, a
-- reap bound, a limit): any text tonumber reads, whole, in [0, max). About
-- a fifth of arg_int's cost (Redis's Lua string patterns are slow), and
-- reserve runs on every call.
local function arg_count(name, s, max)
  local x = tonumber(s)
  if not x or x < 0 or x >= max or x % 1 ~= 0 then  -- NaN fails the last test
    invalid(name, 'must be a whole number from 0 to ' .. string.format('%.0f', max - 1), s)
  end
  return x
end

-- A finite number (window bounds, record ts), e.g. "1764547200.0".
local function arg_num(name, s)
  local x = tonumber(s)
  if not x or x ~= x or x == math.huge or x == -math.huge then
    invalid(name, 'must be a finite number', s)
  end
  return x
end

-- Text that goes into a RESERVATION value or a record as is: it must not
-- break their framing ("\n" separates the fields of a value) and must be
-- delimited as the JSON it stands for: ``open``/``close`` are the byte codes
-- of its first and last characters (34 '"', 91 '[', 93 ']', 123 '{', 125
-- '}'), or nil for any.
local function arg_text(name, s, open, close)
  if find(s, '\n', 1, true) or (open and byte(s, 1) ~= open)
      or (close and (#s < 2 or byte(s, -1) ~= close)) then
    invalid(name, 'must be one line of JSON', s)
  end
  return s
end

-- The usage fragment a settle records: exactly the five counts, each of 1
-- to 10 digits (below 10^10: the client's bound is MAX_TOKENS, 10^9). One
-- anchored find, no captures: a third of the cost of matching and looping.
local D10 = '%d%d?%d?%d?%d?%d?%d?%d?%d?%d?'
local USAGE_PATTERN = '^"input_tokens":' .. D10 .. ',"cached_input_tokens":' .. D10
  .. ',"cache_write_tokens":' .. D10 .. ',"output_tokens":' .. D10
  .. ',"reasoning_tokens":' .. D10 .. '$'
local function arg_usage(name, s)
  if not find(s, USAGE_PATTERN) then
    invalid(name, 'must be the five usage counts as JSON fields of at most 10 digits', s)
  end
  return s
end

-- The ledger clock, Redis TIME, as: decimal seconds text (exact, for
-- records), seconds (number, for window bounds), Unix ms (number).
local function ledger_clock()
  local t = redis.call('TIME')
  local sec, usec = tonumber(t[1]), tonumber(t[2])
  return t[1] .. '.' .. string.format('%06d', usec), sec + usec / 1000000,
    sec * 1000 + math.floor(usec / 1000)
end

local function int_str(x)
  return string.format('%.0f', x)
end

-- Negate an integer held as a decimal string.
local function negate(s)
  if s == '0' then return '0' end
  if string.sub(s, 1, 1) == '-' then return string.sub(s, 2) end
  return '-' .. s
end

local NO_USAGE = '"input_tokens":0,"cached_input_tokens":0,"cache_write_tokens":0,'
  .. '"output_tokens":0,"reasoning_tokens":0'

-- One SpendRecord as JSON. Every part is text the client encoded (usage,
-- scope, tail) or an exact integer string: nothing is re-encoded here, so
-- no float rounding of metadata or amounts.
local function record_json(ts, rid_json, outcome, cost, usage, scope_json, tail)
  return '{"ts":' .. ts .. ',"reservation_id":' .. rid_json .. ',"outcome":"' .. outcome
    .. '",' .. usage .. ',"cost_nano":' .. cost .. ',"scope":' .. scope_json .. ','
    .. tail .. '}'
end

-- Append one record; drop the ones older than the retention period. A
-- retention of 0 keeps no records at all (the rollups below still count
-- every call).
local function append(stream, now_ms, retention_ms, json)
  if retention_ms > 0 then
    redis.call('XADD', stream, 'MINID', int_str(now_ms - retention_ms), '*', 'r', json)
  end
end

-- ROLLUPS: P.."ru:"..hour is a HASH per UTC hour (hour = the Unix second it
-- starts at), expiring ROLLUP_KEEP_S after that. One field per group: the
-- group as JSON, {"scope":S,"role":R,"model":M,"crew":C} (scope is set on
-- blocked calls only); its value is the thirteen counts of
-- crew_budget.ledger.base.ROLLUP_METRICS separated by spaces: calls blocked
-- released expired input cached cache_write output reasoning cost estimate
-- shadow_blocked shadow_blocked_nano (a value written before the last two
-- existed has eleven: the readers count the missing ones as 0).
-- One packed field per group, not one per count: a third of the memory
-- (measured in bench/bench_rollups.py). Every record a script writes
-- (settled, expired, released, blocked, unguarded) adds to its rollup in
-- the same script, so rollups and records can never disagree; resets are
-- not rolled up. Sums stay exact while below 2^53 (~$9M per group-hour).
local ROLLUP_KEEP_S = 400 * 86400
-- Settle writes a rollup on every call, so the value is rewritten cheaply:
-- read with one match (an older value of eleven counts falls back to
-- gmatch); a count this call does not change is copied as the text it was;
-- a sum below 10^14 is left a number for table.concat to write (Lua's
-- "%.14g": every digit, no exponent, below 10^14), larger ones go through
-- int_str. Measured: ~2.5 µs less per rollup than a string.format per count.
local ROLLUP_13 = '^(%d+) (%d+) (%d+) (%d+) (%d+) (%d+) (%d+) (%d+) (%d+) (%d+) (%d+) (%d+) (%d+)$'
local EXACT_CONCAT = 1e14

local function rollup(prefix, t, group, d)
  local hour = math.floor(t / 3600) * 3600
  local key = prefix .. 'ru:' .. int_str(hour)
  local old = redis.call('HGET', key, group)
  local o = old and {string.match(old, ROLLUP_13)} or {}
  if o[13] then
    for i = 1, 13 do
      local x = d[i]
      if x == 0 then
        d[i] = o[i]
      else
        x = x + tonumber(o[i])
        d[i] = x < EXACT_CONCAT and x or int_str(x)
      end
    end
  else
    if old then
      local i = 0
      for x in string.gmatch(old, '%d+') do
        i = i + 1
        d[i] = d[i] + tonumber(x)
      end
    end
    for i = 1, 13 do
      if d[i] >= EXACT_CONCAT then d[i] = int_str(d[i]) end
    end
  end
  redis.call('HSET', key, group, table.concat(d, ' '))
  if not old then redis.call('EXPIREAT', key, int_str(hour + ROLLUP_KEEP_S)) end
end

-- A "reset" record (an operator zeroed a budget, or accepted a loss) is an
-- audit fact that rollups do not hold: it also goes into P.."resets",
-- trimmed to the rollup retention, so reports list resets without reading
-- raw records.
local function keep_reset(prefix, now, json)
  local key = prefix .. 'resets'
  redis.call('ZADD', key, string.format('%.6f', now), json)
  redis.call('ZREMRANGEBYSCORE', key, '-inf', '(' .. int_str(now - ROLLUP_KEEP_S))
end

-- The rollup of a record the scripts built from a record tail (see
-- _tail in redis.py: role, model and crew come first, then
-- "estimate_nano"; no JSON string can hold the unescaped quotes of
-- ',"estimate_nano":', so the first match is the field).
local USAGE_COUNTS = '^"input_tokens":(%d+),"cached_input_tokens":(%d+),'
  .. '"cache_write_tokens":(%d+),"output_tokens":(%d+),"reasoning_tokens":(%d+)$'
-- A shadow-blocked call (see SHADOW_KEY in base.py) has the key
-- "shadow_blocked" in its metadata, which follows "estimate_nano"; only
-- the guard sets it, and inside a JSON string its quotes would be escaped.
local SHADOW = '"shadow_blocked":'
local function rollup_tail(prefix, t, outcome, cost, usage, scope_json, tail)
  local e = find(tail, ',"estimate_nano":', 1, true)
  local group = '{"scope":' .. scope_json .. ',' .. string.sub(tail, 1, e - 1) .. '}'
  if outcome == 'blocked' then
    rollup(prefix, t, group, {0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0})
  elseif outcome == 'released' then
    rollup(prefix, t, group, {0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0})
  else
    local i, c, w, o, r = string.match(usage, USAGE_COUNTS)
    local est = string.match(tail, '^%d+', e + 17)
    local shadow = find(tail, SHADOW, e, true) and 1 or 0
    rollup(prefix, t, group, {1, 0, 0, outcome == 'expired' and 1 or 0, tonumber(i),
      tonumber(c), tonumber(w), tonumber(o), tonumber(r), tonumber(cost), tonumber(est),
      shadow, shadow * tonumber(cost)})
  end
end

-- The rollup of a whole record the client encoded (append_record, charge:
-- rare, so decoding it is affordable). Resets and unknown outcomes: none.
local function rollup_record(prefix, json)
  local r = cjson.decode(json)
  local o = r.outcome
  if o ~= 'settled' and o ~= 'expired' and o ~= 'unguarded' and o ~= 'blocked'
      and o ~= 'released' then
    return
  end
  local function str(x) return x == cjson.null and 'null' or cjson.encode(x) end
  local group = '{"scope":' .. str(r.scope) .. ',"role":' .. str(r.role) .. ',"model":'
    .. str(r.model) .. ',"crew":' .. str(r.crew) .. '}'
  local function n(x) return tonumber(x) or 0 end
  local charged = (o ~= 'blocked' and o ~= 'released') and 1 or 0
  local meta = r.metadata
  local shadow = (charged == 1 and type(meta) == 'table' and meta.shadow_blocked ~= nil)
    and 1 or 0
  rollup(prefix, n(r.ts), group, {charged, o == 'blocked' and 1 or 0,
    o == 'released' and 1 or 0, o == 'expired' and 1 or 0,
    charged * n(r.input_tokens), charged * n(r.cached_input_tokens),
    charged * n(r.cache_write_tokens), charged * n(r.output_tokens),
    charged * n(r.reasoning_tokens), charged * n(r.cost_nano), charged * n(r.estimate_nano),
    shadow, shadow * n(r.cost_nano)})
end

-- The fields of a RESERVATION value ``v``: state, cost (or key spans),
-- expires_ms, amount, tomb_ms, rid_json, tail, then the positions where
-- expires_ms and the buckets JSON start. No capture of the JSON itself.
local function parse(v)
  return string.match(v,
    '^([^\n]*)\n([^\n]*)\n()([^\n]*)\n([^\n]*)\n([^\n]*)\n([^\n]*)\n([^\n]*)\n()')
end

-- The counter keys of a reserved value ``v`` whose buckets JSON starts at
-- position ``at``: cut out by their spans, or decoded without them.
local function counters(v, spans, at)
  local keys = {}
  if spans == '' then
    for i, b in ipairs(cjson.decode(string.sub(v, at))) do keys[i] = b[1] end
  else
    for off, len in string.gmatch(spans, '(%d+)%+(%d+)') do
      local from = at + tonumber(off)
      keys[#keys + 1] = string.sub(v, from, from + tonumber(len) - 1)
    end
  end
  return keys
end

-- COMPACT records: what finish appends for every settle, release and
-- expiry, and reserve for every blocked call (the bulk of the stream).
-- Always the same fields in the same order, so each entry shares its
-- stream node's master fields and stores only its values, and Redis
-- stores the integer ones as integers (listpack encoding): ~75 bytes an
-- entry instead of ~340 for the JSON one.
--   t  ts: the ledger clock in Unix microseconds, modulo 2^20 (~1.05 s); the
--      reader adds the entry id's milliseconds (Redis's clock at the XADD
--      a few microseconds later, never earlier): ts is the latest time
--      <= the id's millisecond with this remainder. Exact, unless Redis's
--      clock stepped back more than a second (then off by whole 2^20 us).
--   i  reservation id (as given)
--   o  outcome: 1 settled, 2 released, 3 expired, 4 blocked
--   n k w x z  input, cached input, cache write, output, reasoning tokens
--   c  cost, nano-USD
--   g  context id: P.."c:"..day (the UTC day of t) maps the record tail's
--      {"role":R,"model":M,"crew":C,"metadata":{...}} (with "scope":S first
--      on a blocked call's: the budget that refused it) to a small integer
--      once a day, so names and metadata are not repeated per record
--   e  estimate, nano-USD
--   m  metadata JSON when it is not in the context (below), else ""
-- A day's contexts expire with its records (the day's end + the records'
-- retention + a day). Metadata unique to each call would make a context
-- per call: past CONTEXTS_MAX contexts in a day, the context leaves the
-- metadata out ({} in it) and "m" carries it.
-- The reader (RedisLedger.records) turns them back into SpendRecords; the
-- other records (unguarded, resets, overrides: rare) stay JSON in "r".
local OUTCOME_CODE = {settled = '1', released = '2', expired = '3', blocked = '4'}
local CONTEXTS_MAX = 20000

local function context_id(prefix, now_ms, retention_ms, who, meta)
  local day = math.floor(now_ms / 86400000)
  local key = prefix .. 'c:' .. int_str(day)
  local ctx = '{' .. who .. ',"metadata":' .. meta .. '}'
  local id = redis.call('HGET', key, ctx)
  if id then return id, '' end
  local n = redis.call('HLEN', key)
  if n >= CONTEXTS_MAX and meta ~= '{}' then
    local bare = '{' .. who .. ',"metadata":{}}'
    id = redis.call('HGET', key, bare)
    if id then return id, meta end
    ctx = bare
  end
  id = n + 1
  redis.call('HSET', key, ctx, id)
  local keep = int_str((day + 2) * 86400 + math.ceil(retention_ms / 1000))
  if n == 0 then
    redis.call('EXPIREAT', key, keep)
  else
    redis.call('EXPIREAT', key, keep, 'GT')  -- a client keeping records longer
  end
  return id, ctx == '{' .. who .. ',"metadata":' .. meta .. '}' and '' or meta
end

local function append_compact(prefix, stream, now_ms, retention_ms, ts, rid, state, cost, usage,
                              tail, scope_json)
  if retention_ms <= 0 then return end
  local i, c, w, o, r = string.match(usage, USAGE_COUNTS)
  local e = find(tail, ',"estimate_nano":', 1, true)
  local est, meta = string.match(tail, '^(%d+),"metadata":(.*)$', e + 17)
  local who = string.sub(tail, 1, e - 1)
  if scope_json then who = '"scope":' .. scope_json .. ',' .. who end
  local id, m = context_id(prefix, now_ms, retention_ms, who, meta)
  redis.call('XADD', stream, 'MINID', int_str(now_ms - retention_ms), '*',
    't', int_str((tonumber(string.sub(ts, 1, -8)) * 1000000 + tonumber(string.sub(ts, -6)))
      % 1048576), 'i', rid, 'o', OUTCOME_CODE[state],
    'n', i, 'k', c, 'w', w, 'x', o, 'z', r, 'c', cost, 'g', id, 'e', est, 'm', m)
end

-- TOMBSTONES: how a repeated settle or release of an ended reservation is
-- answered without keeping a key per reservation (a key costs ~100 bytes
-- before its value). The ids that ended on one UTC day (ledger clock) go
-- into small hashes P.."t:"..day..":"..level..":"..shard, field = 31 bits of
-- SHA1(id) as an integer, value = cost * 4 + state (1 settled, 2 released,
-- 3 expired), or "state cost" as text for a cost of 2^50 or more. Small
-- hashes of integers stay listpack-encoded (Redis's documented memory
-- optimisation: ~12 bytes a field) while they hold at most
-- hash-max-listpack-entries fields (128 in redis.conf, 512 compiled in), so
-- the day's shards grow with its traffic: P.."t:"..day..":n" counts the
-- day's ends, and the n-th goes to level L, the smallest with
-- n <= 64 * 4^L (4^L shards, ~60 fields each; shard = other bits of the
-- SHA1). A lookup tries each level the day reached, for today and
-- yesterday. Every key of a day expires at the end of the NEXT UTC day:
-- an id is remembered at least one day after it ended (up to two).
-- A 31-bit field can collide (a lookup reads at most ~20 shards of ~60
-- fields: odds below 1e-6 that an unknown id matches one; two ids of one
-- shard share a field with odds ~3e-8): then a repeat is answered with the
-- other id's state and cost. Nothing is charged on that path either way:
-- money moves only while P.."r:"..rid exists.
local TOMB_CODE = {settled = 1, released = 2, expired = 3}
local TOMB_STATE = {'settled', 'released', 'expired'}

local function tomb_level(n)
  local level, cap = 1, 256
  while n > cap and level < 10 do level, cap = level + 1, cap * 4 end
  return level
end

local function tomb_hash(rid)
  local h = redis.sha1hex(rid)
  return tonumber(string.sub(h, 1, 5), 16),
    int_str(tonumber(string.sub(h, 6, 13), 16) % 2147483648)
end

local function tomb_put(prefix, rid, state, cost, now_ms)
  local day = math.floor(now_ms / 86400000)
  local base = prefix .. 't:' .. int_str(day) .. ':'
  local keep = int_str((day + 2) * 86400)
  local n = redis.call('INCR', base .. 'n')
  if n == 1 then redis.call('EXPIREAT', base .. 'n', keep) end
  local level = tomb_level(n)
  local shard, field = tomb_hash(rid)
  local key = base .. level .. ':' .. int_str(shard % 4 ^ level)
  local c = tonumber(cost)
  local value = c < 1125899906842624 and int_str(c * 4 + TOMB_CODE[state])
    or (state .. ' ' .. cost)
  redis.call('HSET', key, field, value)
  redis.call('EXPIREAT', key, keep)
end

-- The settle/release reply for an id with no P.."r:"..rid: {state, 0, cost}
-- from its tombstone, or {"unknown"}.
local function tomb_get(prefix, rid, now_ms)
  local today = math.floor(now_ms / 86400000)
  local shard, field = tomb_hash(rid)
  for day = today, today - 1, -1 do
    local base = prefix .. 't:' .. int_str(day) .. ':'
    local n = tonumber(redis.call('GET', base .. 'n') or '0')
    if n > 0 then
      for level = 1, tomb_level(n) do
        local v = redis.call('HGET', base .. level .. ':' .. int_str(shard % 4 ^ level), field)
        if v then
          local x = tonumber(v)
          if x then
            return {TOMB_STATE[x % 4], 0, int_str((x - x % 4) / 4)}
          end
          local state, cost = string.match(v, '^(%a+) (%d+)$')
          return {state, 0, cost}
        end
      end
    end
  end
  return {'unknown'}
end

-- End a reservation whose value is ``v`` (state 'reserved'): on exactly the
-- buckets it charged, move its amount out of ``reserved`` and ``cost`` into
-- ``spent``; delete its key and keep its TOMBSTONE (so repeats stay
-- idempotent); append its COMPACT record. A counter that expired meanwhile
-- (its window ended more than the retention period ago) is not recreated.
--
-- ``reserved`` going below zero means either that HINCRBY just recreated an
-- expired counter (a hash with that one field and no expiry: deleted again)
-- or that the counter is already wrong (a half-applied write of an older
-- version, a hand edit). In the second case the counter still holds
-- ``spent``: deleting it would erase the role's spend and grant calls
-- against money already spent, so ``reserved`` is clamped to 0 instead,
-- ``spent`` is kept, and the server log says so.
-- UNITS (see RESERVATION above): what ending the reservation charges a
-- bucket that took ``took`` of unit ``letter``: on a release 0 (the
-- provider was never reached), on an expiry what it took; on a settle the
-- usage's count: input tokens as the provider counts the prompt (uncached
-- + cached + cache writes), output tokens (reasoning included), one call.
-- A settle with no prompt tokens (an unreadable usage, charged at the
-- reservation) charges what it took: over-count, never under-count.
local function unit_charge(letter, took, state, usage)
  if state == 'released' then return '0' end
  if state ~= 'settled' then return took end
  local i, c, w, o = string.match(usage, USAGE_COUNTS)
  local prompt = tonumber(i) + tonumber(c) + tonumber(w)
  if prompt == 0 then return took end
  if letter == 'i' then return int_str(prompt) end
  if letter == 'o' then return o end
  return '1'
end

local function finish(leases, stream, rkey, rid, v, state, cost, usage, ts, now_ms, retention_ms)
  local _, spans, _, exp, amount, tomb, rid_json, tail, at = parse(v)
  local usd_neg, usd_cost = negate(amount), cost
  local units, hash = nil, find(spans, '#', 1, true)
  if hash then  -- UNITS: one entry per counter key
    units = {}
    for e in string.gmatch(string.sub(spans, hash + 1) .. ',', '([^,]*),') do
      units[#units + 1] = e
    end
    spans = string.sub(spans, 1, hash - 1)
  end
  for k, key in ipairs(counters(v, spans, at)) do
    local gone
    local neg, add = usd_neg, usd_cost
    local e = units and units[k] or ''
    if e ~= '' then
      local letter, took = string.sub(e, 1, 1), string.sub(e, 2)
      neg, add = negate(took), unit_charge(letter, took, state, usage)
    end
    if neg == '0' then  -- nothing to take back; just do not recreate the counter
      gone = redis.call('EXISTS', key) == 0
    elseif redis.call('HINCRBY', key, 'reserved', neg) < 0 then
      if redis.call('HLEN', key) == 1 and redis.call('PTTL', key) == -1 then
        redis.call('DEL', key)  -- HINCRBY just recreated it
        gone = true
      else
        redis.log(redis.LOG_WARNING, 'crew-budget: reserved of ' .. key .. ' fell below 0 '
          .. 'ending ' .. rid .. '; clamped to 0, spent kept')
        redis.call('HSET', key, 'reserved', '0')
      end
    end
    if not gone and add ~= '0' then
      redis.call('HINCRBY', key, 'spent', add)
    end
  end
  -- The key goes; the TOMBSTONE (above) answers repeats.
  local prefix = string.sub(leases, 1, -7)
  redis.call('DEL', rkey)
  tomb_put(prefix, rid, state, cost, now_ms)
  redis.call('ZREM', leases, rid)
  append_compact(prefix, stream, now_ms, retention_ms, ts, rid, state, cost, usage, tail)
  rollup_tail(prefix, now_ms / 1000, state, cost, usage, 'null', tail)
end

-- Expire at most ``limit`` reservations whose lease ran out (expiry <= now):
-- each is charged at its reserved amount (over-count, never under-count)
-- and marked 'expired'. Returns how many.
local function reap(prefix, leases, stream, limit, ts, now_ms, retention_ms)
  local due = redis.call('ZRANGEBYSCORE', leases, '-inf', int_str(now_ms), 'LIMIT', 0, limit)
  local n = 0
  for _, rid in ipairs(due) do
    local rkey = prefix .. 'r:' .. rid
    local v = redis.call('GET', rkey)
    local state, amount
    if v then
      local s, _, _, _, a = parse(v)
      state, amount = s, a
    end
    if state == 'reserved' then
      finish(leases, stream, rkey, rid, v, 'expired', amount, NO_USAGE, ts, now_ms, retention_ms)
      n = n + 1
    else
      redis.call('ZREM', leases, rid)
    end
  end
  return n
end


-- EPOCH: how a ledger that lost its state is told from a brand-new one.
-- P.."epoch" holds "new:<id>" (made by the first reserve on an empty
-- ledger), "recovered:<id>" (written by `crew-budget recover --accept-loss`)
-- or "lost:<ts>:<what>" (a loss was detected; every reserve refuses until a
-- recovery). It is written without expiry, so volatile-* eviction never
-- takes it. Each client sends the epoch it last saw ("" before its first
-- reserve). The check, in the reserve script before any write:
--   the key holds "lost:..."              -> refuse
--   the key is missing, and the client saw an epoch -> mark "lost", refuse
--   the key is missing otherwise          -> a brand-new ledger (or one
--                                            written by crew-budget 0.1.0,
--                                            before epochs): "new:<rid>"
--   the key differs from the client's, the client saw one, and it is a
--   "new:" one (someone else started afresh on the emptied ledger)
--                                         -> mark "lost", refuse
--   otherwise (the same, or "recovered:") -> go on (the client adopts it)
-- ``e`` is the key's value, read by the caller (false or nil: missing).
-- Returns the epoch in force ("lost:..." when refused).
local function check_epoch(prefix, seen, rid, ts, e)
  local key = prefix .. 'epoch'
  if e == seen then return e end
  if e and string.sub(e, 1, 5) == 'lost:' then return e end
  local what
  if not e then
    if seen ~= '' then
      what = 'its epoch ' .. seen .. ' is gone: the data was deleted'
    else
      e = 'new:' .. rid
      redis.call('SET', key, e)
      return e
    end
  elseif seen ~= '' and string.sub(e, 1, 4) == 'new:' then
    what = 'it was started afresh as ' .. e .. ' after holding ' .. seen
  else
    return e
  end
  local lost = 'lost:' .. ts .. ':' .. what
  redis.call('SET', key, lost)
  return lost
end
