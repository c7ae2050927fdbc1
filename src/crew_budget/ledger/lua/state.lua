-- state: where one reservation stands (read only).
--
-- KEYS[1] - P.."leases"   (ZSET of lease expiry; P is derived from it)
-- KEYS[2] - P.."r:"..rid  (the reservation while it is held)
-- ARGV[1] - reservation id
--
-- Returns the state of the reservation (reserved, or settled|released|
-- expired|unguarded from its key) or, once its key is gone, from its
-- TOMBSTONE (see _common.lua); "unknown" if neither knows it.
--
-- Invariants: writes nothing.

-- VALIDATION (before any write; see VALIDATION in _common.lua) ----------
if #KEYS < 2 or #ARGV < 1 then
  invalid('state', 'takes at least 2 keys and 1 argument', #ARGV)
end
arg_text('the reservation id', ARGV[1], nil, nil)
-- -------------------------------------------------------------------------

local v = redis.call('GET', KEYS[2])
if v then return string.match(v, '^[^\n]*') end
local _, _, now_ms = ledger_clock()
return tomb_get(string.sub(KEYS[1], 1, -7), ARGV[1], now_ms)[1]
