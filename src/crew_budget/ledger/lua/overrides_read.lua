-- overrides_read: the live-limits version and every override, in one
-- consistent read (see overrides_write.lua).
--
-- KEYS[1]      - P.."ov"          (HASH "role|kind" -> Override JSON)
-- KEYS[2]      - P.."ov:version"  (STRING integer)
--
-- Returns {version, {json, json, ...}} ("0" when never set). Writes nothing.
return {redis.call('GET', KEYS[2]) or '0', redis.call('HVALS', KEYS[1])}
