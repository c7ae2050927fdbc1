-- crew-budget Redis ledger: helpers prepended to every operation script.
--
-- Not a script on its own: RedisLedger prepends this text to each operation
-- file before registering it, so every operation is still ONE script (one
-- EVALSHA, one atomic step) with its contract at the top of its own file.
--
-- Key layout. Every key of a namespace carries the hash tag {ns}, so all of
-- them hash to one Redis Cluster slot; P below is the prefix "cb:{ns}:".
--   P.."leases"         ZSET    reservation id -> lease expiry (Unix ms)
--   P.."records"        STREAM  spend records, field "r" = SpendRecord JSON,
--                               trimmed by MINID to the retention period
--   P.."odd"            ZSET    appended records whose ts is far from the
--                               ledger clock (score = ts), trimmed by score
--   P.."oddseq"         STRING  counter keeping "odd" members unique
--   P.."r:"..rid        STRING  one reservation, see RESERVATION below
--   P.."b:"..bucketkey  HASH    spent, reserved (nano-USD integers)
--   P.."claim:"..marker STRING  exactly-once markers (SET NX PX, no script)
--   P.."epoch"          STRING  the ledger's EPOCH (below); never expires
--   P.."ru:"..hour      HASH    the ROLLUPS of one UTC hour (below)
--   P.."resets"         ZSET    "reset" records (JSON, score = ts), kept as
--                               long as rollups, whatever the records' retention
--
-- Keys DERIVED inside scripts rather than passed in KEYS: reap builds
-- P.."r:"..rid from the ids in the leases ZSET, and finish reads the counter
-- keys a reservation charged from its value (they were in the KEYS of the
-- reserve that created it). All carry the same hash tag as KEYS[1]: same
-- slot, so every script stays cluster-safe.
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

-- TOMBSTONE: once a reservation ends, its value keeps the same eight fields
-- but with an empty tail and "[]" for buckets: all that is read from it
-- later is the state and cost (repeated settle/release), and expires_ms and
-- amount (a repeated reserve). It stays readable for its lease plus a day,
-- so at ~80 bytes instead of ~1 KB a busy fleet's tombstones take a tenth
-- of the memory. (crew-budget 0.1.0 kept the whole value; both read both.)

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

local function rollup(prefix, t, group, d)
  local hour = math.floor(t / 3600) * 3600
  local key = prefix .. 'ru:' .. int_str(hour)
  local old = redis.call('HGET', key, group)
  if old then
    local i = 0
    for x in string.gmatch(old, '%d+') do
      i = i + 1
      d[i] = d[i] + tonumber(x)
    end
  end
  for i = 1, 13 do d[i] = int_str(d[i]) end
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

-- End a reservation whose value is ``v`` (state 'reserved'): on exactly the
-- buckets it charged, move its amount out of ``reserved`` and ``cost`` into
-- ``spent``; keep it as a tombstone for its lease plus a day (so repeats
-- stay idempotent); append its record. A counter that expired meanwhile
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
  -- The tombstone: final state and cost, without tail and buckets (see
  -- TOMBSTONE above).
  redis.call('SET', rkey, state .. '\n' .. cost .. '\n' .. exp .. '\n' .. amount .. '\n' .. tomb
    .. '\n' .. rid_json .. '\n\n[]', 'PX', tomb)
  redis.call('ZREM', leases, rid)
  append(stream, now_ms, retention_ms, record_json(ts, rid_json, state, cost, usage, 'null', tail))
  rollup_tail(string.sub(leases, 1, -7), now_ms / 1000, state, cost, usage, 'null', tail)
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
-- Returns the epoch in force ("lost:..." when refused).
local function check_epoch(prefix, seen, rid, ts)
  local key = prefix .. 'epoch'
  local e = redis.call('GET', key)
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
