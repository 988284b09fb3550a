"""Key names and the Lua scripts of the Redis transport.

Every key of one event name shares the Redis Cluster hash tag ``{name}``, so each script
touches keys of one slot. The scripts use the server's clock (``TIME``), never the
client's, for retry due times.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = [
    "CLAIM_IDS",
    "DEAD_LETTER",
    "DL_ATTEMPT",
    "DL_NOTES",
    "DL_ORIGIN",
    "IDLE",
    "LEASE",
    "META_ATTEMPT",
    "META_NOTES",
    "META_ORIGIN",
    "PAYLOAD",
    "PROMOTE",
    "PRUNE_CONSUMERS",
    "RECORD_AND_ACK",
    "REPLAY",
    "RETRY",
    "STATS",
    "TAKE",
    "TRIM",
    "Keys",
]

# Field names the scripts below write as literals (tests/test_redis_commands.py checks).
PAYLOAD = "payload"
META_ATTEMPT = "_attempt"  # on a redeliver entry
META_NOTES = "_notes"
META_ORIGIN = "_origin"
DL_ATTEMPT = "_dl_attempt"  # on a dead letter
DL_NOTES = "_dl_notes"
DL_ORIGIN = "_dl_origin"


@dataclass(frozen=True, slots=True)
class Keys:
    """The keys of one group on one event name."""

    stream: str
    redeliver: str
    retry: str
    dead: str
    handled: str
    """The prefix of the group's handled records: one key per event id, with a TTL."""

    @classmethod
    def of(cls, prefix: str, topic: str, group: str) -> Keys:
        """``prefix:{topic}`` and its per-group companions."""
        stream = f"{prefix}:{{{topic}}}"
        return cls(
            stream=stream,
            redeliver=f"{stream}:redeliver:{group}",
            retry=f"{stream}:retry:{group}",
            dead=f"{stream}:dead:{group}",
            handled=f"{stream}:handled:{group}:",
        )


# Fields of an entry without the transport's own bookkeeping fields (those starting "_").
_COPY_FIELDS = """
local function copy_fields(fields, out)
  for i = 1, #fields, 2 do
    if string.sub(fields[i], 1, 1) ~= '_' then
      out[#out + 1] = fields[i]
      out[#out + 1] = fields[i + 1]
    end
  end
  return out
end
-- The first write this user's ACL refuses, as an error, or nil: checked before writing
-- anything, so that a refused script leaves no half-done move to be repeated.
local function refused_write(commands)
  for _, command in ipairs(commands) do
    if not redis.acl_check_cmd(unpack(command)) then
      return "NOPERM the user executing the script can't run " .. command[1] .. ' on ' .. command[2]
    end
  end
  return nil
end
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
"""

# KEYS: source stream, retry zset. ARGV: group, entry id, delete, delay ms, attempt,
# notes, origin id. Writes the retry first, acknowledges second; returns 1. Returns 0,
# doing nothing, for an entry no longer pending that is still in the stream (settled
# already: a repeated call after a lost reply); -1 for an entry gone from the stream
# (deleted or trimmed: acknowledged, for the caller to dead-letter what it holds).
RETRY = (
    _COPY_FIELDS
    + """
local pending = #redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[2], ARGV[2], 1) > 0
local entries = redis.call('XRANGE', KEYS[1], ARGV[2], ARGV[2])
if #entries == 0 then
  if pending then redis.call('XACK', KEYS[1], ARGV[1], ARGV[2]) end
  return -1
end
if not pending then return 0 end
local refused = refused_write({{'ZADD', KEYS[2], '0', 'm'}, {'XACK', KEYS[1], ARGV[1], ARGV[2]},
                               {'XDEL', KEYS[1], ARGV[2]}})
if refused then return redis.error_reply(refused) end
local fields = copy_fields(entries[1][2], {})
local member = cmsgpack.pack({fields, ARGV[5], ARGV[6], ARGV[7], ARGV[2]})
redis.call('ZADD', KEYS[2], now_ms() + tonumber(ARGV[4]), member)
redis.call('XACK', KEYS[1], ARGV[1], ARGV[2])
if ARGV[3] == '1' then redis.call('XDEL', KEYS[1], ARGV[2]) end
return 1
"""
)

# KEYS: stream, redeliver stream, then the handled records to write. ARGV: group, record
# TTL ms, how many ids of the stream follow, those ids, then the redeliver stream's ids.
# Writes the records first, then acks (and deletes the redelivered copies), so that no
# entry is acked without its record; writes nothing when the ACL refuses any of it.
RECORD_AND_ACK = (
    _COPY_FIELDS
    + """
local group, ttl, n = ARGV[1], ARGV[2], tonumber(ARGV[3])
local writes = {}
for i = 3, #KEYS do writes[#writes + 1] = {'SET', KEYS[i], '1', 'PX', ttl} end
if n > 0 then writes[#writes + 1] = {'XACK', KEYS[1], group, ARGV[4]} end
if #ARGV > 3 + n then
  writes[#writes + 1] = {'XACK', KEYS[2], group, ARGV[4 + n]}
  writes[#writes + 1] = {'XDEL', KEYS[2], ARGV[4 + n]}
end
local refused = refused_write(writes)
if refused then return redis.error_reply(refused) end
for i = 3, #KEYS do redis.call('SET', KEYS[i], '1', 'PX', ttl) end
if n > 0 then redis.call('XACK', KEYS[1], group, unpack(ARGV, 4, 3 + n)) end
if #ARGV > 3 + n then
  redis.call('XACK', KEYS[2], group, unpack(ARGV, 4 + n))
  redis.call('XDEL', KEYS[2], unpack(ARGV, 4 + n))
end
return #KEYS - 2
"""
)

# KEYS: retry zset, redeliver stream. ARGV: max entries to move.
# Moves due retries to the redeliver stream; returns ms until the next one, or -1.
PROMOTE = (
    _COPY_FIELDS
    + """
local now = now_ms()
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, tonumber(ARGV[1]))
for _, member in ipairs(due) do
  local item = cmsgpack.unpack(member)
  local fields = item[1]
  fields[#fields + 1] = '_attempt'
  fields[#fields + 1] = item[2]
  fields[#fields + 1] = '_notes'
  fields[#fields + 1] = item[3]
  fields[#fields + 1] = '_origin'
  fields[#fields + 1] = item[4]
  redis.call('XADD', KEYS[2], '*', unpack(fields))
  redis.call('ZREM', KEYS[1], member)
end
local next_due = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
if #next_due == 0 then return -1 end
return math.max(0, tonumber(next_due[2]) - now)
"""
)

# KEYS: source stream, dead stream. ARGV: group, entry id, delete, topic, attempt, notes,
# origin id, force, then the fields the caller holds (name, value, ...). Keeps the raw
# fields of the entry (whatever bytes they hold), or the caller's when the entry is gone
# from the stream, then acks. Returns 0, doing nothing, for an entry no longer pending
# that is still in the stream (settled already: a repeated call after a lost reply),
# unless force; an entry gone from the stream is always recorded.
DEAD_LETTER = (
    _COPY_FIELDS
    + """
local entries = redis.call('XRANGE', KEYS[1], ARGV[2], ARGV[2])
if ARGV[8] ~= '1' and #entries > 0
   and #redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[2], ARGV[2], 1) == 0 then
  return 0  -- already settled (a repeated call after a lost reply)
end
local refused = refused_write({{'XADD', KEYS[2], '*', 'f', 'v'},
                               {'XACK', KEYS[1], ARGV[1], ARGV[2]}, {'XDEL', KEYS[1], ARGV[2]}})
if refused then return redis.error_reply(refused) end
local out = {}
if #entries > 0 then
  copy_fields(entries[1][2], out)
else
  for i = 9, #ARGV do out[#out + 1] = ARGV[i] end
end
for _, pair in ipairs({{'_dl_topic', ARGV[4]}, {'_dl_group', ARGV[1]},
                       {'_dl_attempt', ARGV[5]}, {'_dl_notes', ARGV[6]},
                       {'_dl_origin', ARGV[7]}}) do
  out[#out + 1] = pair[1]
  out[#out + 1] = pair[2]
end
local id = redis.call('XADD', KEYS[2], '*', unpack(out))
redis.call('XACK', KEYS[1], ARGV[1], ARGV[2])
if ARGV[3] == '1' then redis.call('XDEL', KEYS[1], ARGV[2]) end
return id
"""
)

# KEYS: dead stream, redeliver stream. ARGV: dead entry id.
# Moves one dead letter back to its group as attempt 1; returns 1, or 0 when it is gone.
REPLAY = (
    _COPY_FIELDS
    + """
local entries = redis.call('XRANGE', KEYS[1], ARGV[1], ARGV[1])
if #entries == 0 then return 0 end
local origin = ARGV[1]
local raw = entries[1][2]
for i = 1, #raw, 2 do
  if raw[i] == '_dl_origin' then origin = raw[i + 1] end
end
local fields = copy_fields(raw, {})
fields[#fields + 1] = '_attempt'
fields[#fields + 1] = '1'
fields[#fields + 1] = '_origin'
fields[#fields + 1] = origin
redis.call('XADD', KEYS[2], '*', unpack(fields))
redis.call('XDEL', KEYS[1], ARGV[1])
return 1
"""
)

# KEYS: stream, redeliver stream, retry zset. ARGV: group.
# 1 when the group has nothing unread, pending or scheduled on this event name (one
# atomic look, so that an entry moving between the keys is never missed).
IDLE = """
local function stream_idle(key, group)
  if redis.call('EXISTS', key) == 0 then return true end
  for _, g in ipairs(redis.call('XINFO', 'GROUPS', key)) do
    local t = {}
    for i = 1, #g, 2 do t[g[i]] = g[i + 1] end
    if t['name'] == group then
      if tonumber(t['pending']) > 0 then return false end
      local after = redis.call('XRANGE', key, '(' .. t['last-delivered-id'], '+', 'COUNT', 1)
      return #after == 0
    end
  end
  return false
end
if redis.call('ZCARD', KEYS[3]) > 0 then return 0 end
if stream_idle(KEYS[1], ARGV[1]) and stream_idle(KEYS[2], ARGV[1]) then return 1 end
return 0
"""

# KEYS: stream, redeliver stream, retry zset, dead stream. ARGV: group.
# {waiting, in flight, scheduled, dead}: entries not yet delivered to the group (its lag,
# counted up to 100,000 when Redis cannot tell it), pending entries, scheduled retries,
# dead letters; one atomic look.
STATS = """
local function counts(key, group)
  if redis.call('EXISTS', key) == 0 then return 0, 0 end
  for _, g in ipairs(redis.call('XINFO', 'GROUPS', key)) do
    local t = {}
    for i = 1, #g, 2 do t[g[i]] = g[i + 1] end
    if t['name'] == group then
      local lag = t['lag']
      if type(lag) ~= 'number' then
        lag = #redis.call('XRANGE', key, '(' .. t['last-delivered-id'], '+', 'COUNT', 100000)
      end
      return lag, tonumber(t['pending'])
    end
  end
  return 0, 0
end
local function consumers(key, group)  -- {name, idle ms, name, idle ms, ...}
  local out = {}
  if redis.call('EXISTS', key) == 0 then return out end
  for _, c in ipairs(redis.call('XINFO', 'CONSUMERS', key, group)) do
    local t = {}
    for i = 1, #c, 2 do t[c[i]] = c[i + 1] end
    out[#out + 1] = t['name']
    out[#out + 1] = t['idle']
  end
  return out
end
local function oldest(key, group)  -- ms since the oldest pending entry was added, or -1
  if redis.call('EXISTS', key) == 0 then return -1 end
  local first = redis.call('XPENDING', key, group, '-', '+', 1)
  if #first == 0 then return -1 end
  local t = redis.call('TIME')
  local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  return now - tonumber(string.match(first[1][1], '^(%d+)'))
end
local waiting, pending = counts(KEYS[1], ARGV[1])
local waiting2, pending2 = counts(KEYS[2], ARGV[1])
local length = 0
if redis.call('EXISTS', KEYS[1]) == 1 then length = redis.call('XLEN', KEYS[1]) end
return {waiting + waiting2, pending + pending2, redis.call('ZCARD', KEYS[3]),
        redis.call('XLEN', KEYS[4]), length, consumers(KEYS[1], ARGV[1]),
        oldest(KEYS[1], ARGV[1])}
"""

# KEYS: stream. ARGV: group, consumer, min idle ms, cursor, count.
# XAUTOCLAIM ... JUSTID (delivery counts unchanged), returned raw: cursor, ids, deleted ids.
CLAIM_IDS = """
return redis.call('XAUTOCLAIM', KEYS[1], ARGV[1], ARGV[2], ARGV[3], ARGV[4],
                  'COUNT', ARGV[5], 'JUSTID')
"""

# KEYS: stream. ARGV: group, consumer, min idle ms, entry id.
# Takes one pending entry for the consumer, counting one more delivery (XCLAIM, idle 0),
# only while the consumer still holds it or it has been idle at least min idle ms (its
# holder died): the check and the claim are one atomic step, so that of two consumers
# after the same entry one takes it and the other neither gets it nor raises its count.
# Returns {1, fields, deliveries} when taken; {0} when it is no longer pending (settled);
# {-1} when another consumer holds it; {-2} when it is gone from the stream (left
# pending, for the caller to record).
TAKE = """
local rows = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[4], ARGV[4], 1)
if #rows == 0 then return {0} end
local holder, idle, deliveries = rows[1][2], rows[1][3], rows[1][4]
if holder ~= ARGV[2] and idle < tonumber(ARGV[3]) then return {-1} end
if #redis.call('XRANGE', KEYS[1], ARGV[4], ARGV[4]) == 0 then return {-2} end
local claimed = redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0, ARGV[4])
return {1, claimed[1][2], deliveries + 1}
"""

# KEYS: stream. ARGV: group, consumer, idle ms, entry ids.
# Sets the idle time of the entries the consumer still holds (XCLAIM ... IDLE ... JUSTID:
# delivery counts unchanged; an entry gone from the stream leaves the pending list), and
# leaves alone those another consumer took over meanwhile: a lease is renewed (idle 0) or
# handed back (idle past the claim timeout) by its holder only. Returns how many it set.
LEASE = """
local held = {'XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0}
for i = 4, #ARGV do
  local rows = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[i], ARGV[i], 1)
  if #rows > 0 and rows[1][2] == ARGV[2] then held[#held + 1] = ARGV[i] end
end
if #held == 5 then return 0 end
local count = #held - 5
held[#held + 1] = 'IDLE'
held[#held + 1] = ARGV[3]
held[#held + 1] = 'JUSTID'
redis.call(unpack(held))
return count
"""

# KEYS: stream. ARGV: group, min idle ms, this consumer's name.
# Deletes the group's consumers (but this one) that hold nothing and have been idle at
# least min idle ms: those of dead workers. One atomic look, so that a consumer is never
# deleted with an entry it read meanwhile. Returns how many were deleted.
PRUNE_CONSUMERS = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
local removed = 0
for _, c in ipairs(redis.call('XINFO', 'CONSUMERS', KEYS[1], ARGV[1])) do
  local t = {}
  for i = 1, #c, 2 do t[c[i]] = c[i + 1] end
  if t['name'] ~= ARGV[3] and tonumber(t['pending']) == 0
     and tonumber(t['idle']) >= tonumber(ARGV[2]) then
    removed = removed + redis.call('XGROUP', 'DELCONSUMER', KEYS[1], ARGV[1], t['name'])
  end
end
return removed
"""

# KEYS: stream. ARGV: retention ms, most entries to trim.
# Trims (XTRIM MINID ~, which never goes past its threshold) the entries that every group
# of the stream has acknowledged and that are older than the retention window (server
# time minus retention ms); returns how many went. A group needs its pending entries (from
# the oldest) and those it was not given yet (after its last-delivered id; the last one
# given stays too, which spares an id's arithmetic). A stream without groups is left
# whole: the groups of its readers may not exist yet.
TRIM = """
local function before(a, b)  -- whether stream id a < b (ids 'ms-seq', no leading zeros)
  local a_ms, a_seq = string.match(a, '^(%d+)-(%d+)$')
  local b_ms, b_seq = string.match(b, '^(%d+)-(%d+)$')
  if a_ms ~= b_ms then return #a_ms < #b_ms or (#a_ms == #b_ms and a_ms < b_ms) end
  return #a_seq < #b_seq or (#a_seq == #b_seq and a_seq < b_seq)
end
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
local groups = redis.call('XINFO', 'GROUPS', KEYS[1])
if #groups == 0 then return 0 end
local t = redis.call('TIME')
local edge_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000) - tonumber(ARGV[1])
local safe = string.format('%d-0', math.max(0, edge_ms))
for _, g in ipairs(groups) do
  local info = {}
  for i = 1, #g, 2 do info[g[i]] = g[i + 1] end
  local needed = info['last-delivered-id']
  if tonumber(info['pending']) > 0 then
    needed = redis.call('XPENDING', KEYS[1], info['name'])[2]
  end
  if before(needed, safe) then safe = needed end
end
return redis.call('XTRIM', KEYS[1], 'MINID', '~', safe, 'LIMIT', tonumber(ARGV[2]))
"""
